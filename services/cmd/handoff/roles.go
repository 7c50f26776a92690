package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"

	"github.com/handoff-health/handoff/services/auth"
	"github.com/handoff-health/handoff/services/grpcserver"
)

func init() {
	commands["roles"] = command{summary: "print which role may call which method (the README's table)", run: func(context.Context, *slog.Logger, []string) error {
		_, err := os.Stdout.WriteString(roleTable())
		return err
	}}
}

// roleTable renders every service's policy as one Markdown table.
func roleTable() string {
	roles := []auth.Role{auth.RoleCounselor, auth.RoleClinicAdmin, auth.RoleEHR, auth.RoleReminders, auth.RoleWorker,
		auth.RoleCalendarFeed, auth.RoleCalendarReader, auth.RoleWebhookSender}
	var b strings.Builder
	b.WriteString("| method |")
	for _, r := range roles {
		fmt.Fprintf(&b, " %s |", r)
	}
	b.WriteString("\n|---|")
	for range roles {
		b.WriteString(":-:|")
	}
	b.WriteString("\n")
	for _, d := range serviceDefs {
		for _, m := range sortedMethods(d.policy) {
			short := m[strings.LastIndex(m, ".")+1:]
			fmt.Fprintf(&b, "| `%s` |", strings.Replace(short, "Service/", ".", 1))
			for _, r := range roles {
				mark := ""
				if slices.Contains(d.policy[m], r) {
					mark = "✓"
				}
				fmt.Fprintf(&b, " %s |", mark)
			}
			b.WriteString("\n")
		}
	}
	return b.String()
}

func sortedMethods(p grpcserver.Policy) []string {
	ms := make([]string, 0, len(p))
	for m := range p {
		ms = append(ms, m)
	}
	slices.Sort(ms)
	return ms
}
