package aip

import "github.com/handoff-health/handoff/services/apperr"

// ListArgs resolves a List request's filter and page token: the parsed
// filter, the key to resume after, and the query hash that binds tokens to
// this collection, parent and filter. The collection counts: the lists
// under one family share its name as parent, and a barrier's token given
// to the warning signs would skip every sign older than that barrier.
// Errors are INVALID_ARGUMENT on the right field.
func ListArgs(collection, parent, filter, token string, fields map[string]FilterField) (Filter, string, uint64, error) {
	f, err := ParseFilter(filter, fields)
	if err != nil {
		return Filter{}, "", 0, apperr.Field("filter", "%v", err)
	}
	q := QueryHash(collection, parent, filter)
	after, ok := DecodePageToken(token, q)
	if !ok {
		return Filter{}, "", 0, apperr.Field("page_token", "not a page token of this query: list again from the first page")
	}
	return f, after, q, nil
}

// CheckEtag is ABORTED when the caller sent an etag that is not the
// resource's current one. An empty etag means "unconditionally". The etag
// may come as an HTTP ETag header gave it (quoted, or weak), as ParseEtag
// reads it: a REST client copies the header into the body.
func CheckEtag(name, sent, current string) error {
	if sent != "" && BareEtag(sent) != current {
		return apperr.EtagMismatch(name)
	}
	return nil
}
