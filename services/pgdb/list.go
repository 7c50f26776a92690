package pgdb

import (
	"context"
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5"

	"github.com/handoff-health/handoff/services/aip"
)

// ListRequest is what every AIP List request carries.
type ListRequest interface {
	GetParent() string
	GetFilter() string
	GetPageToken() string
	GetPageSize() int32
}

// ListPage serves one page of a List ordered by id: sel (a SELECT ... FROM),
// narrowed by scope (a condition over scopeArgs as $1, $2 ...), by the
// request's filter over fields, and by the page token. what names the
// resource in errors and binds the page tokens to it; name gives each item's resource name for the next
// page token.
func ListPage[T any](ctx context.Context, db Querier, what, sel, scope string, scopeArgs []any,
	req ListRequest, fields map[string]aip.FilterField, scan pgx.RowToFunc[T], name func(T) string) ([]T, string, error) {
	f, after, q, err := aip.ListArgs(what, req.GetParent(), req.GetFilter(), req.GetPageToken(), fields)
	if err != nil {
		return nil, "", err
	}
	size := aip.PageSize(req.GetPageSize())
	n := len(scopeArgs)
	where, args := f.SQL(n + 3)
	rows, err := db.Query(ctx, fmt.Sprintf("%s WHERE %s AND id > $%d AND %s ORDER BY id LIMIT $%d", sel, scope, n+1, where, n+2),
		slices.Concat(scopeArgs, []any{after, size + 1}, args)...)
	if err != nil {
		return nil, "", fmt.Errorf("list %s: %w", what, err)
	}
	items, err := pgx.CollectRows(rows, scan)
	if err != nil {
		return nil, "", fmt.Errorf("list %s: %w", what, err)
	}
	items, next := aip.Page(items, size, q, func(t T) string { return aip.ID(name(t)) })
	return items, next, nil
}
