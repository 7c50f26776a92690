package aip

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
)

// FieldKind is the type of a filterable field.
type FieldKind int

// Kinds of filterable field.
const (
	String FieldKind = iota
	Bool
	Time
	Enum
	// EnumIn matches when an array column holds the enum value.
	EnumIn
	// EnumSet is a value that stands for several of an integer column's
	// (Values): = and != test whether the column holds one of them, as
	// an index on the column can serve, where a derived column could not.
	EnumSet
	// Custom takes = alone, its condition the field's Render.
	Custom
)

// FilterField declares one field that a List method may filter on.
type FilterField struct {
	Column string
	Kind   FieldKind
	// Enum maps an enum value name (with or without its prefix) to its number.
	Enum func(string) (int32, bool)
	// Collection and IDColumn, for a String field whose Column spells a
	// resource name, clinics/{clinic}/{Collection}/{id}, from the row's
	// clinic and IDColumn: = and != then compare those two columns, which
	// an index on (clinic, IDColumn) serves, and not the name spelled
	// out for every row.
	Collection, IDColumn string
	// Values maps an EnumSet field's value to the column's values it
	// stands for, none for a value that stands for none; ok is false for
	// a value the field does not have, which is refused.
	Values func(string) (values []int32, ok bool)
	// Render gives a Custom field's condition, the value being the
	// parameter param ("$3"), which it may use more than once.
	Render func(param string) string
	// Implies, for an Enum field whose Column is derived from stored
	// columns, gives for a value a condition on those columns (SQL of
	// literals, no parameters) that every row deriving that value meets,
	// or "" for none. It is added to an = on the value: a partial index
	// whose predicate it states can then serve the comparison, which
	// the derived column alone could not.
	Implies func(int32) string
}

// Filter is a parsed AIP-160 filter: comparisons joined by AND.
type Filter struct {
	conds []cond
}

type cond struct {
	name     string // the filter's field
	contains bool
	set      bool                // value is the []int32 the column may hold
	render   func(string) string // a Custom field's condition
	column   string
	op       string
	value    any
	// named: a resource name compared by its clinic and id (FilterField
	// Collection), the id in idColumn.
	named    string
	idColumn string
	implied  string // a condition every matching row meets (FilterField.Implies)
}

// ParseFilter parses a filter of the form `a = "x" AND b >= 3`. Only the
// fields in fields may appear; equality works on every kind, ordering
// operators on times and strings.
func ParseFilter(src string, fields map[string]FilterField) (Filter, error) {
	toks, err := lex(src)
	if err != nil {
		return Filter{}, err
	}
	var f Filter
	for i := 0; i < len(toks); {
		if i > 0 {
			// AIP-160 spells its keywords in capitals; "and" is a value.
			if toks[i].text != "AND" || toks[i].quoted {
				return Filter{}, fmt.Errorf("expected AND before %q (only AND is supported)", toks[i].text)
			}
			i++
		}
		if i+3 > len(toks) {
			return Filter{}, fmt.Errorf("incomplete condition at the end of the filter")
		}
		name, op, val := toks[i], toks[i+1], toks[i+2]
		i += 3
		fd, ok := fields[name.text]
		if !ok || name.quoted || name.op {
			return Filter{}, fmt.Errorf("unknown field %q; allowed: %s", name.text, fieldNames(fields))
		}
		if !op.op {
			// A quoted "=" is a string, not the operator.
			return Filter{}, fmt.Errorf("expected an operator after %s, not %q", name.text, op.text)
		}
		if val.op || !val.quoted && val.text == "AND" {
			// `owner = AND state = X` lost its value; it is not a
			// comparison with the string "AND".
			return Filter{}, fmt.Errorf("%s %s needs a value, not %q", name.text, op.text, val.text)
		}
		c, err := makeCond(name.text, fd, op.text, val)
		if err != nil {
			return Filter{}, err
		}
		f.conds = append(f.conds, c)
	}
	return f, nil
}

func makeCond(name string, fd FilterField, op string, val token) (cond, error) {
	switch op {
	case "=", "!=", "<", "<=", ">", ">=":
	default:
		return cond{}, fmt.Errorf("unknown operator %q after %s", op, name)
	}
	ordered := op != "=" && op != "!="
	c := cond{name: name, column: fd.Column, op: op, contains: fd.Kind == EnumIn}
	if op == "!=" {
		c.op = "<>"
	}
	if fd.Kind == String && fd.Collection != "" && !ordered {
		c.named, c.idColumn = fd.Collection, fd.IDColumn
	}
	switch fd.Kind {
	case String:
		c.value = val.text
	case Custom:
		if op != "=" {
			return cond{}, fmt.Errorf("%s takes = only", name)
		}
		c.value, c.render = val.text, fd.Render
	case Bool:
		// Exactly true or false: ParseBool would also take 1, T and F.
		b, err := strconv.ParseBool(val.text)
		if err != nil || ordered || val.text != "true" && val.text != "false" {
			return cond{}, fmt.Errorf("%s takes = or != with true or false", name)
		}
		c.value = b
	case Time:
		t, err := time.Parse(time.RFC3339, val.text)
		if err != nil {
			return cond{}, fmt.Errorf("%s needs an RFC 3339 time such as \"2026-01-02T15:04:05Z\"", name)
		}
		c.value = t
	case EnumSet:
		if ordered {
			return cond{}, fmt.Errorf("%s takes = or !=", name)
		}
		vals, ok := fd.Values(val.text)
		if !ok {
			return cond{}, fmt.Errorf("%s has no value %q", name, val.text)
		}
		c.set, c.value = true, append([]int32{}, vals...)
	case Enum, EnumIn:
		n, ok := fd.Enum(val.text)
		if !ok || ordered {
			return cond{}, fmt.Errorf("%s takes = or != with a value of its enum, not %q", name, val.text)
		}
		c.value = n
		if fd.Kind == Enum && fd.Implies != nil && op == "=" {
			c.implied = fd.Implies(n)
		}
	}
	return c, nil
}

// Equals returns the text the filter's field name is compared with by =
// (not a contains, nor a negation), if it is; "" and false if not.
func (f Filter) Equals(name string) (string, bool) {
	for _, c := range f.conds {
		if v, ok := c.value.(string); ok && c.name == name && c.op == "=" && !c.contains && v != "" {
			return v, true
		}
	}
	return "", false
}

// Names reports whether f compares the field name.
func (f Filter) Names(name string) bool {
	return slices.ContainsFunc(f.conds, func(c cond) bool { return c.name == name })
}

// PinnedBy returns whether filter, read with fields, compares one of names
// with = to the name of one record (namesRecord): a list narrowed to one
// family, meeting or workflow. Not to "", the column's default, which
// every row without one shares, nor to a clinic's name. A filter that
// does not parse counts as pinned: the list refuses it, with why.
func PinnedBy(filter string, fields map[string]FilterField) func(names ...string) bool {
	return func(names ...string) bool {
		f, err := ParseFilter(filter, fields)
		if err != nil {
			return true
		}
		return slices.ContainsFunc(f.conds, func(c cond) bool {
			v, _ := c.value.(string)
			return c.op == "=" && slices.Contains(names, c.name) && namesRecord(v)
		})
	}
}

// namesRecord reports whether v holds the name of a record in a clinic,
// clinics/{clinic}/{collection}/{id}[/...], after any prefix (a workflow
// id's "boundary/"), every segment of it non-empty.
func namesRecord(v string) bool {
	i := strings.Index(v, "clinics/")
	if i < 0 || i > 0 && v[i-1] != '/' {
		return false
	}
	segs := strings.Split(v[i:], "/")
	return len(segs) >= 4 && !slices.Contains(segs, "")
}

// TimeBounds returns the latest lower and the earliest upper bound the
// filter puts on column, a time field's: ok says which it has. A query
// may narrow its scan to them, every matching row lying within.
func (f Filter) TimeBounds(column string) (from, to time.Time, fromOK, toOK bool) {
	for _, c := range f.conds {
		t, isTime := c.value.(time.Time)
		if c.column != column || !isTime {
			continue
		}
		if c.op == "=" || c.op == ">" || c.op == ">=" {
			if !fromOK || t.After(from) {
				from, fromOK = t, true
			}
		}
		if c.op == "=" || c.op == "<" || c.op == "<=" {
			if !toOK || t.Before(to) {
				to, toOK = t, true
			}
		}
	}
	return from, to, fromOK, toOK
}

// SQL renders the filter as a condition on the declared columns, numbering
// parameters from next. It returns "TRUE" for an empty filter.
func (f Filter) SQL(next int) (string, []any) {
	if len(f.conds) == 0 {
		return "TRUE", nil
	}
	parts := make([]string, len(f.conds))
	args := make([]any, len(f.conds))
	for i, c := range f.conds {
		switch {
		case c.render != nil:
			parts[i] = "(" + c.render(fmt.Sprintf("$%d", next+i)) + ")"
		case c.contains && c.op == "=":
			parts[i] = fmt.Sprintf("$%d = ANY(%s)", next+i, c.column)
		case c.contains:
			parts[i] = fmt.Sprintf("NOT ($%d = ANY(%s))", next+i, c.column)
		case c.set && c.op == "=":
			parts[i] = fmt.Sprintf("%s = ANY($%d::int4[])", c.column, next+i)
		case c.set:
			parts[i] = fmt.Sprintf("NOT (%s = ANY($%d::int4[]))", c.column, next+i)
		case c.implied != "":
			parts[i] = fmt.Sprintf("(%s AND %s %s $%d)", c.implied, c.column, c.op, next+i)
		case c.named != "":
			// The clinic and id read off the name, for the index; the
			// whole name compared too, so that a name with more segments,
			// or of another collection, matches nothing as before.
			p := fmt.Sprintf("(clinic = split_part($%[1]d, '/', 2) AND %[2]s = split_part($%[1]d, '/', 4) AND $%[1]d::text = %[3]s)", next+i, c.idColumn, c.column)
			if c.op == "<>" {
				p = "NOT " + p
			}
			parts[i] = p
		default:
			parts[i] = fmt.Sprintf("%s %s $%d", c.column, c.op, next+i)
		}
		args[i] = c.value
	}
	return strings.Join(parts, " AND "), args
}

type token struct {
	text   string
	quoted bool // a string literal, whatever it holds
	op     bool // a comparison operator
}

func lex(src string) ([]token, error) {
	var toks []token
	r := []rune(src)
	for i := 0; i < len(r); {
		switch c := r[i]; {
		case unicode.IsSpace(c):
			i++
		case c == '"':
			j := i + 1
			var b strings.Builder
			for ; j < len(r) && r[j] != '"'; j++ {
				if r[j] == '\\' && j+1 < len(r) {
					j++
				}
				b.WriteRune(r[j])
			}
			if j >= len(r) {
				return nil, fmt.Errorf("unterminated string in filter")
			}
			toks = append(toks, token{text: b.String(), quoted: true})
			i = j + 1
		case strings.ContainsRune("=!<>", c):
			j := i + 1
			if j < len(r) && r[j] == '=' {
				j++
			}
			toks = append(toks, token{text: string(r[i:j]), op: true})
			i = j
		default:
			j := i
			for j < len(r) && !unicode.IsSpace(r[j]) && !strings.ContainsRune("=!<>\"", r[j]) {
				j++
			}
			toks = append(toks, token{text: string(r[i:j])})
			i = j
		}
	}
	return toks, nil
}

func fieldNames(fields map[string]FilterField) string {
	names := make([]string, 0, len(fields))
	for n := range fields {
		names = append(names, n)
	}
	slices.Sort(names) // a stable message
	return strings.Join(names, ", ")
}

// EnumLookup builds an Enum resolver from a protobuf enum's value map (the
// generated XXX_value), accepting names with or without the enum's prefix.
func EnumLookup(values map[string]int32, prefix string) func(string) (int32, bool) {
	return func(s string) (int32, bool) {
		if n, ok := values[s]; ok && n != 0 {
			return n, true
		}
		if n, ok := values[prefix+s]; ok && n != 0 {
			return n, true
		}
		return 0, false
	}
}

// Without returns fields less names: a caller who receives a cut view of a
// resource must not filter on what the cut leaves out, or the filter would
// tell what the view hides.
func Without(fields map[string]FilterField, names ...string) map[string]FilterField {
	out := make(map[string]FilterField, len(fields))
	for k, v := range fields {
		if !slices.Contains(names, k) {
			out[k] = v
		}
	}
	return out
}
