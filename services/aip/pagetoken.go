package aip

import (
	"encoding/base64"
	"encoding/json"
	"hash/fnv"
	"strings"
)

// Page sizes (AIP-158).
const (
	DefaultPageSize = 50
	MaxPageSize     = 1000
)

// PageSize applies the default and the maximum to a requested page size.
func PageSize(requested int32) int {
	switch {
	case requested <= 0:
		return DefaultPageSize
	case requested > MaxPageSize:
		return MaxPageSize
	default:
		return int(requested)
	}
}

// pageToken is the opaque cursor handed to clients: the sort key of the last
// row returned and a hash of the query it belongs to, so a token cannot be
// replayed against a different parent or filter.
type pageToken struct {
	After string `json:"a"`
	Query uint64 `json:"q"`
}

// QueryHash identifies a list query by everything that shapes its results.
func QueryHash(parts ...string) uint64 {
	h := fnv.New64a()
	for _, p := range parts {
		h.Write([]byte(p))
		h.Write([]byte{0})
	}
	return h.Sum64()
}

// EncodePageToken returns the token for the page after the row with key after.
func EncodePageToken(after string, query uint64) string {
	b, _ := json.Marshal(pageToken{After: after, Query: query})
	return base64.RawURLEncoding.EncodeToString(b)
}

// RekeyPageToken returns token (made by EncodePageToken) for the page after
// the row with key after instead: "" for "", and token as it is if it
// does not decode.
func RekeyPageToken(token, after string) string {
	b, err := base64.RawURLEncoding.DecodeString(token)
	var t pageToken
	if token == "" || err != nil || json.Unmarshal(b, &t) != nil {
		return token
	}
	return EncodePageToken(after, t.Query)
}

// DecodePageToken returns the key to resume after. An empty token starts at
// the beginning. ok is false for a malformed token or one minted for another
// query.
func DecodePageToken(token string, query uint64) (after string, ok bool) {
	if token == "" {
		return "", true
	}
	b, err := base64.RawURLEncoding.DecodeString(token)
	if err != nil {
		return "", false
	}
	var t pageToken
	// Tokens are not signed: one made by hand with a key no row has (a
	// NUL, which PostgreSQL's text refuses; JSON has made any other
	// bytes UTF-8) is malformed, not an error of the store.
	if err := json.Unmarshal(b, &t); err != nil || t.Query != query || t.After == "" || strings.ContainsRune(t.After, 0) {
		return "", false
	}
	return t.After, true
}

// Page trims the one extra row a List query fetched past size and returns
// the token for the next page, keyed by the last row kept.
func Page[T any](items []T, size int, query uint64, key func(T) string) ([]T, string) {
	if len(items) <= size {
		return items, ""
	}
	return items[:size], EncodePageToken(key(items[size-1]), query)
}
