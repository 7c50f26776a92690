package codec

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	commonpb "go.temporal.io/api/common/v1"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/temporal"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

func key(t *testing.T) []byte {
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return k
}

func TestSealsOpensAndRotates(t *testing.T) {
	k1, k2 := key(t), key(t)
	old, err := New("k1", map[string][]byte{"k1": k1})
	if err != nil {
		t.Fatal(err)
	}
	canary := "clinics/north/families/CANARY-Sam-Rivera"
	p, err := old.DataConverter().ToPayload(map[string]string{"family": canary})
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(p.GetData(), []byte("CANARY")) || string(p.GetMetadata()["encryption-key-id"]) != "k1" {
		t.Fatalf("payload not sealed: %v", p)
	}
	// After rotation, the old payload still opens, new ones use k2.
	rotated, err := New("k2", map[string][]byte{"k1": k1, "k2": k2})
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]string
	if err := rotated.DataConverter().FromPayload(p, &got); err != nil || got["family"] != canary {
		t.Fatalf("decode after rotation: %v, %v", got, err)
	}
	p2, _ := rotated.DataConverter().ToPayload("x")
	if string(p2.GetMetadata()["encryption-key-id"]) != "k2" {
		t.Fatal("new payloads must use the current key")
	}
	// Tampering, a swapped key id, and an unknown key all fail.
	tampered := &commonpb.Payload{Metadata: p.GetMetadata(), Data: append([]byte(nil), p.GetData()...)}
	tampered.Data[len(tampered.Data)-1] ^= 1
	if _, err := rotated.Decode([]*commonpb.Payload{tampered}); err == nil {
		t.Fatal("a tampered payload opened")
	}
	swapped := &commonpb.Payload{Metadata: map[string][]byte{"encoding": []byte("binary/encrypted"), "encryption-key-id": []byte("k2")}, Data: p.GetData()}
	if _, err := rotated.Decode([]*commonpb.Payload{swapped}); err == nil {
		t.Fatal("a payload opened under another key id")
	}
	if _, err := New("k2", map[string][]byte{"k2": k2}); err != nil {
		t.Fatal(err)
	}
	onlyNew, _ := New("k2", map[string][]byte{"k2": k2})
	if _, err := onlyNew.Decode([]*commonpb.Payload{p}); err == nil || !strings.Contains(err.Error(), "unknown key") {
		t.Fatalf("unknown key: %v", err)
	}
	// A payload not sealed (written by a client without the key) is
	// refused, not acted on.
	plain, err := converter.GetDefaultDataConverter().ToPayload(map[string]string{"Family": "clinics/north/families/f1"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rotated.Decode([]*commonpb.Payload{plain}); !errors.Is(err, ErrUnsealed) {
		t.Fatalf("an unsealed payload: %v; want it refused", err)
	}
	var in map[string]string
	if err := rotated.DataConverter().FromPayload(plain, &in); err == nil {
		t.Fatalf("the data converter took an unsealed payload: %v", in)
	}
	if _, err := New("k1", map[string][]byte{"k1": []byte("short")}); err == nil {
		t.Fatal("a short key was accepted")
	}
	if _, err := Parse("a", "a:not-base64!"); err == nil {
		t.Fatal("a malformed key spec was accepted")
	}
}

func TestCodecEndpointDecodesForAuthorizedCallersOnly(t *testing.T) {
	c, _ := New("k1", map[string][]byte{"k1": key(t)})
	sealed := func(v any) []byte {
		p, err := c.DataConverter().ToPayload(v)
		if err != nil {
			t.Fatal(err)
		}
		body, err := protojson.Marshal(&commonpb.Payloads{Payloads: []*commonpb.Payload{p}})
		if err != nil {
			t.Fatal(err)
		}
		return body
	}
	var mu sync.Mutex
	var records []string
	srv := httptest.NewServer(c.Handler(func(r *http.Request) (string, error) {
		switch r.Header.Get("Authorization") {
		case "Bearer ok":
			return "north", nil // an administrator of clinic north
		case "Bearer counselor":
			return "", &Refusal{Status: http.StatusForbidden, Reason: "role clinic_admin required"}
		case "Bearer keys-down":
			return "", &Refusal{Status: http.StatusServiceUnavailable, Reason: "cannot be checked now"}
		case "Bearer no-status":
			return "", &Refusal{Reason: "a refusal that names no status"}
		}
		return "", errors.New("not allowed")
	}, func(_ *http.Request, clinic string, n, left int) {
		mu.Lock()
		defer mu.Unlock()
		records = append(records, fmt.Sprintf("%s opened %d left %d", clinic, n, left))
	}))
	defer srv.Close()
	post := func(token string, body []byte) (int, string) {
		req, _ := http.NewRequest("POST", srv.URL+"/decode", bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	own := sealed("clinics/north/families/f1 secret-value")
	if code, _ := post("", own); code != http.StatusUnauthorized {
		t.Fatalf("no token: %d", code)
	}
	// A good token without the right is forbidden; one that cannot be
	// checked now is to be tried again.
	for token, want := range map[string]int{"counselor": http.StatusForbidden, "keys-down": http.StatusServiceUnavailable,
		"no-status": http.StatusUnauthorized} {
		if code, out := post(token, own); code != want || strings.Contains(out, "secret-value") {
			t.Fatalf("%s: %d %s; want %d", token, code, out, want)
		}
	}
	code, out := post("ok", own)
	if code != http.StatusOK {
		t.Fatalf("authorized: %d %s", code, out)
	}
	var decoded commonpb.Payloads
	if err := protojson.Unmarshal([]byte(out), &decoded); err != nil || len(decoded.GetPayloads()) != 1 ||
		!strings.Contains(string(decoded.GetPayloads()[0].GetData()), "secret-value") {
		t.Fatalf("decoded = %s, %v", out, err)
	}
	// Each decode is recorded with what it opened.
	mu.Lock()
	if len(records) != 1 || records[0] != "north opened 1 left 0" {
		t.Fatalf("records %q; want the one decode, one payload opened", records)
	}
	mu.Unlock()
	// Another clinic's payloads stay sealed, by resource name or by field,
	// and so does one that names no clinic (an outcome): nothing shows that
	// it is the caller's.
	for _, other := range [][]byte{
		sealed("clinics/south/families/f9 other-secret"),
		sealed(struct{ Clinic, Note string }{"south", "other-secret"}),
		sealed("clinics/north/families/f1 clinics/south/families/f9 other-secret"),
		sealed(struct{ Kind, Note string }{"ACCEPTED", "other-secret"}),
	} {
		code, out := post("ok", other)
		if strings.Contains(out, "other-secret") {
			t.Fatalf("a payload not shown to be the caller's was opened: %d %s", code, out)
		}
		var back commonpb.Payloads
		if err := protojson.Unmarshal([]byte(out), &back); code == http.StatusOK &&
			(err != nil || len(back.GetPayloads()) != 1 || string(back.GetPayloads()[0].GetMetadata()["encoding"]) != "binary/encrypted") {
			t.Fatalf("want the payload back sealed: %d %s", code, out)
		}
	}
	mu.Lock()
	if len(records) != 5 || records[4] != "north opened 0 left 1" {
		t.Fatalf("records %q; want each of the other clinic's decodes recorded with nothing opened", records)
	}
	mu.Unlock()
	// Only decoding is served, and a body has a limit.
	req, _ := http.NewRequest("POST", srv.URL+"/encode", strings.NewReader(`{"payloads":[]}`))
	req.Header.Set("Authorization", "Bearer ok")
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("encode: %d, want 404", resp.StatusCode)
	}
	if code, _ := post("ok", bytes.Repeat([]byte(" "), maxDecodeBody+1)); code == http.StatusOK {
		t.Fatal("an oversized body was decoded")
	}
}

// A failure's message and stack trace leave sealed; its type, which
// workflows branch on, stays readable, and the worker reads the message
// back.
func TestFailuresAreSealed(t *testing.T) {
	c, err := New("k1", map[string][]byte{"k1": key(t)})
	if err != nil {
		t.Fatal(err)
	}
	// Off (the default), a failure's type is written in clear, for a
	// worker of the release before; a sealed one is read all the same.
	if f := c.FailureConverter().ErrorToFailure(temporal.NewNonRetryableApplicationError("refused", "NO_CAPACITY", nil)); f.GetApplicationFailureInfo().GetType() != "NO_CAPACITY" {
		t.Fatalf("with sealing off the type is %q; want it in clear", f.GetApplicationFailureInfo().GetType())
	}
	c.SealFailureTypes(true)
	fc := c.FailureConverter()
	// A refusal's reason is its type: it says as much as its message.
	cause := temporal.NewNonRetryableApplicationError("reinforce: CANARY-in-treatment", "FAMILY_IN_TREATMENT_CANARY", nil)
	f := fc.ErrorToFailure(temporal.NewNonRetryableApplicationError("create reminder: the message names CANARY-opioid", "InvalidArgument", cause))
	raw, err := proto.Marshal(f)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(raw, []byte("CANARY")) || bytes.Contains(raw, []byte("InvalidArgument")) {
		t.Fatalf("the failure carries its message or type in clear: %v", f)
	}
	if !f.GetApplicationFailureInfo().GetNonRetryable() || !f.GetCause().GetApplicationFailureInfo().GetNonRetryable() {
		t.Fatalf("the failure no longer says it is not to be retried: %v", f)
	}
	back := fc.FailureToError(f)
	var app *temporal.ApplicationError
	if !errors.As(back, &app) || !strings.Contains(app.Error(), "CANARY-opioid") || app.Type() != "InvalidArgument" || !app.NonRetryable() {
		t.Fatalf("read back: %v", back)
	}
	var inner *temporal.ApplicationError
	if !errors.As(app.Unwrap(), &inner) || inner.Type() != "FAMILY_IN_TREATMENT_CANARY" || !strings.Contains(inner.Error(), "CANARY-in-treatment") {
		t.Fatalf("its cause read back: %v", app.Unwrap())
	}
	// Reading back leaves the failure it read as it was.
	if f.GetApplicationFailureInfo().GetType() != sealedType {
		t.Fatalf("reading the failure changed it: type %q", f.GetApplicationFailureInfo().GetType())
	}
	// An error read back, written again (the SDK keeps the failure it was
	// read from inside it) and read again keeps its type, as does the
	// failure it was read from.
	again := fc.FailureToError(fc.ErrorToFailure(back))
	if !errors.As(again, &app) || app.Type() != "InvalidArgument" || !errors.As(app.Unwrap(), &inner) || inner.Type() != "FAMILY_IN_TREATMENT_CANARY" {
		t.Fatalf("written again and read back: %v", again)
	}
	if twice := fc.FailureToError(fc.ErrorToFailure(back)); !errors.As(twice, &app) || app.Type() != "InvalidArgument" {
		t.Fatalf("written a second time: %v", twice)
	}
	// Written by a worker with sealing off, read by one with it on, and
	// the other way round.
	c.SealFailureTypes(false)
	if !errors.As(c.FailureConverter().FailureToError(f), &app) || app.Type() != "InvalidArgument" {
		t.Fatalf("a sealed failure read with sealing off: %v", app)
	}

	// A failure written before types were sealed (in a history recorded
	// then) is read as it was written.
	old := temporal.NewDefaultFailureConverter(temporal.DefaultFailureConverterOptions{DataConverter: c.DataConverter(), EncodeCommonAttributes: true}).
		ErrorToFailure(temporal.NewNonRetryableApplicationError("an older refusal", "NO_CAPACITY", nil))
	if !errors.As(fc.FailureToError(old), &app) || app.Type() != "NO_CAPACITY" || !strings.Contains(app.Error(), "an older refusal") {
		t.Fatalf("an older failure read back: %v", fc.FailureToError(old))
	}
}
