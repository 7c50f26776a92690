package gateway

import (
	"bytes"
	"encoding/json"
	"fmt"
	"html/template"
	"sort"
	"strings"
)

// A reference page rendered once from the OpenAPI document: every operation
// by service, with its path, parameters and description. Plain HTML, no
// scripts, so it works offline and behind strict content policies.

type refOp struct {
	Method, Path, Summary, Description, ID string
	Params                                 []refParam
	Body, Response                         string
}

type refParam struct {
	Name, In, Type, Description string
	Required                    bool
}

type refGroup struct {
	Tag string
	Ops []refOp
}

var refTemplate = template.Must(template.New("ref").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Handoff API reference</title>
<style>
body{font:15px/1.5 system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#222}
h2{border-bottom:1px solid #ccc;margin-top:2em} .op{margin:1.2em 0;padding:.6em .9em;border-left:4px solid #4a7}
.m{font:bold 13px monospace;padding:2px 6px;border-radius:3px;background:#eee;margin-right:.5em}
code{font-size:13px} table{border-collapse:collapse;font-size:13px} td,th{border:1px solid #ddd;padding:2px 6px;text-align:left}
.d{white-space:pre-wrap;color:#444}
</style></head><body>
<h1>Handoff API reference</h1>
<p>REST under <code>/v1/</code>, generated from the gRPC APIs. Send <code>Authorization: Bearer &lt;token&gt;</code>.
Use <code>Idempotency-Key</code> on writes so retries change nothing twice, and <code>If-Match</code> with the
<code>ETag</code> you read so you never overwrite someone else's change (a stale <code>If-Match</code> answers 412, a stale
<code>etag</code> in the body 409).
Errors are <code>google.rpc.Status</code> JSON with details. The machine-readable document is <a href="/openapi.json">/openapi.json</a>.</p>
{{range .}}<h2>{{.Tag}}</h2>{{range .Ops}}
<div class="op" id="{{.ID}}"><div><span class="m">{{.Method}}</span><code>{{.Path}}</code></div>
<p><b>{{.Summary}}</b></p>{{if .Description}}<p class="d">{{.Description}}</p>{{end}}
{{if .Params}}<table><tr><th>parameter</th><th>in</th><th>type</th><th>required</th><th>description</th></tr>
{{range .Params}}<tr><td><code>{{.Name}}</code></td><td>{{.In}}</td><td>{{.Type}}</td><td>{{if .Required}}yes{{end}}</td><td class="d">{{.Description}}</td></tr>{{end}}
</table>{{end}}{{if .Body}}<p>Body: <code>{{.Body}}</code></p>{{end}}{{if .Response}}<p>Returns: <code>{{.Response}}</code></p>{{end}}</div>
{{end}}{{end}}</body></html>`))

func referencePage(doc []byte) ([]byte, error) {
	var d struct {
		Paths map[string]map[string]struct {
			Summary     string   `json:"summary"`
			Description string   `json:"description"`
			OperationID string   `json:"operationId"`
			Tags        []string `json:"tags"`
			Parameters  []struct {
				Name        string          `json:"name"`
				In          string          `json:"in"`
				Type        string          `json:"type"`
				Required    bool            `json:"required"`
				Description string          `json:"description"`
				Schema      json.RawMessage `json:"schema"`
			} `json:"parameters"`
			Responses map[string]struct {
				Schema struct {
					Ref string `json:"$ref"`
				} `json:"schema"`
			} `json:"responses"`
		} `json:"paths"`
	}
	if err := json.Unmarshal(doc, &d); err != nil {
		return nil, fmt.Errorf("gateway: reference: %w", err)
	}
	groups := map[string][]refOp{}
	for path, ops := range d.Paths {
		for method, op := range ops {
			r := refOp{Method: strings.ToUpper(method), Path: path, Summary: op.Summary, Description: op.Description, ID: op.OperationID}
			if r.Summary == "" {
				r.Summary, r.Description = firstSentence(op.Description)
			}
			for _, p := range op.Parameters {
				if p.In == "body" {
					r.Body = refName(p.Schema)
					continue
				}
				r.Params = append(r.Params, refParam{Name: p.Name, In: p.In, Type: p.Type, Required: p.Required, Description: p.Description})
			}
			r.Response = strings.TrimPrefix(op.Responses["200"].Schema.Ref, "#/definitions/")
			tag := "API"
			if len(op.Tags) > 0 {
				tag = op.Tags[0]
			}
			groups[tag] = append(groups[tag], r)
		}
	}
	var out []refGroup
	for tag, ops := range groups {
		sort.Slice(ops, func(i, j int) bool {
			if ops[i].Path != ops[j].Path {
				return ops[i].Path < ops[j].Path
			}
			return ops[i].Method < ops[j].Method
		})
		out = append(out, refGroup{Tag: tag, Ops: ops})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Tag < out[j].Tag })
	var buf bytes.Buffer
	if err := refTemplate.Execute(&buf, out); err != nil {
		return nil, fmt.Errorf("gateway: reference: %w", err)
	}
	return buf.Bytes(), nil
}

func refName(schema json.RawMessage) string {
	var s struct {
		Ref string `json:"$ref"`
	}
	_ = json.Unmarshal(schema, &s)
	if s.Ref == "" {
		return "object"
	}
	return strings.TrimPrefix(s.Ref, "#/definitions/")
}

func firstSentence(s string) (string, string) {
	if i := strings.Index(s, ". "); i > 0 {
		return s[:i+1], strings.TrimSpace(s[i+2:])
	}
	return s, ""
}
