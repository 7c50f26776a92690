// Package codec encrypts every Temporal payload with AES-256-GCM before it
// leaves the process, so Temporal's database holds no readable workflow
// data. Each payload names the key that sealed it, so keys rotate: new
// payloads use the current key, old ones still open with theirs.
package codec

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"os"
	"regexp"
	"strings"

	commonpb "go.temporal.io/api/common/v1"
	failurepb "go.temporal.io/api/failure/v1"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/temporal"
	"google.golang.org/protobuf/proto"
)

const (
	encoding     = "binary/encrypted"
	metaKeyID    = "encryption-key-id"
	metaEncoding = "encoding"
)

// Codec is a converter.PayloadCodec.
type Codec struct {
	current string
	aeads   map[string]cipher.AEAD
	// sealTypes: failures are written with their types sealed (see
	// FailureConverter); they are read so either way.
	sealTypes bool
}

// SealFailureTypes makes the failure converter write each failure's type
// sealed. Off, types are written in clear as before, and read sealed or
// not: a worker of the release before reads a sealed type as "Sealed",
// and would take a workflow down the wrong branch, so types are sealed
// only once no worker of that release is left (HANDOFF_SEAL_FAILURE_TYPES),
// and a rollback goes back past this release only with it off again.
func (c *Codec) SealFailureTypes(on bool) { c.sealTypes = on }

// New returns a codec that seals with keys[current] and opens with any of
// keys. Keys are 32 bytes (AES-256).
func New(current string, keys map[string][]byte) (*Codec, error) {
	c := &Codec{current: current, aeads: map[string]cipher.AEAD{}}
	for id, k := range keys {
		if len(k) != 32 {
			return nil, fmt.Errorf("codec: key %q must be 32 bytes, not %d", id, len(k))
		}
		block, err := aes.NewCipher(k)
		if err != nil {
			return nil, fmt.Errorf("codec: key %q: %w", id, err)
		}
		aead, err := cipher.NewGCM(block)
		if err != nil {
			return nil, fmt.Errorf("codec: key %q: %w", id, err)
		}
		c.aeads[id] = aead
	}
	if _, ok := c.aeads[current]; !ok {
		return nil, fmt.Errorf("codec: the current key %q is not among the keys", current)
	}
	return c, nil
}

// Parse reads keys written as "id:base64key,id2:base64key" (standard
// base64 of 32 bytes), the form the environment carries.
func Parse(current, spec string) (*Codec, error) {
	keys := map[string][]byte{}
	for _, part := range strings.Split(spec, ",") {
		id, b64, ok := strings.Cut(strings.TrimSpace(part), ":")
		if !ok || id == "" {
			return nil, errors.New("codec: keys must look like id:base64key[,id:base64key]")
		}
		k, err := base64.StdEncoding.DecodeString(b64)
		if err != nil {
			return nil, fmt.Errorf("codec: key %q: %w", id, err)
		}
		keys[id] = k
	}
	return New(current, keys)
}

// LoadOrCreateKeyFile keeps one development key in path (mode 0600) and
// returns a codec for it.
func LoadOrCreateKeyFile(path string) (*Codec, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		k := make([]byte, 32)
		if _, err := rand.Read(k); err != nil {
			return nil, fmt.Errorf("codec: %w", err)
		}
		b = []byte("dev1:" + base64.StdEncoding.EncodeToString(k))
		if err := os.WriteFile(path, b, 0o600); err != nil {
			return nil, fmt.Errorf("codec: save key: %w", err)
		}
	} else if err != nil {
		return nil, fmt.Errorf("codec: %w", err)
	}
	id, _, _ := strings.Cut(strings.TrimSpace(string(b)), ":")
	return Parse(id, strings.TrimSpace(string(b)))
}

// Encode seals each payload with the current key.
func (c *Codec) Encode(payloads []*commonpb.Payload) ([]*commonpb.Payload, error) {
	out := make([]*commonpb.Payload, len(payloads))
	aead := c.aeads[c.current]
	for i, p := range payloads {
		plain, err := proto.Marshal(p)
		if err != nil {
			return nil, fmt.Errorf("codec: encode: %w", err)
		}
		nonce := make([]byte, aead.NonceSize())
		if _, err := rand.Read(nonce); err != nil {
			return nil, fmt.Errorf("codec: nonce: %w", err)
		}
		// The key id is authenticated data: moving a payload to another key
		// id fails to open.
		sealed := aead.Seal(nonce, nonce, plain, []byte(c.current))
		out[i] = &commonpb.Payload{
			Metadata: map[string][]byte{metaEncoding: []byte(encoding), metaKeyID: []byte(c.current)},
			Data:     sealed,
		}
	}
	return out, nil
}

// Decode opens sealed payloads and refuses any other. Every payload the
// workers and services write is sealed, so one that is not was written by
// a client without the key (Temporal's CLI or Web UI, say): taken as it is,
// it would start a workflow or signal one, and the worker would act on it
// under its own identity. Refused, the key is what allows it.
func (c *Codec) Decode(payloads []*commonpb.Payload) ([]*commonpb.Payload, error) {
	return c.decode(payloads, false)
}

// ErrUnsealed is Decode's refusal of a payload that is not sealed.
var ErrUnsealed = errors.New("codec: an unsealed payload is refused")

// decode is Decode; plain passes unsealed payloads through instead of
// refusing them (for showing payloads, not for acting on them).
func (c *Codec) decode(payloads []*commonpb.Payload, plain bool) ([]*commonpb.Payload, error) {
	out := make([]*commonpb.Payload, len(payloads))
	for i, p := range payloads {
		if string(p.GetMetadata()[metaEncoding]) != encoding {
			if !plain {
				return nil, fmt.Errorf("%w (encoding %q): it was not written by a Handoff process", ErrUnsealed, p.GetMetadata()[metaEncoding])
			}
			out[i] = p
			continue
		}
		id := string(p.GetMetadata()[metaKeyID])
		aead, ok := c.aeads[id]
		if !ok {
			return nil, fmt.Errorf("codec: payload sealed with unknown key %q", id)
		}
		data := p.GetData()
		if len(data) < aead.NonceSize() {
			return nil, errors.New("codec: payload too short")
		}
		plain, err := aead.Open(nil, data[:aead.NonceSize()], data[aead.NonceSize():], []byte(id))
		if err != nil {
			return nil, fmt.Errorf("codec: open payload: %w", err)
		}
		var inner commonpb.Payload
		if err := proto.Unmarshal(plain, &inner); err != nil {
			return nil, fmt.Errorf("codec: decode payload: %w", err)
		}
		out[i] = &inner
	}
	return out, nil
}

// DataConverter is Temporal's default converter with this codec on top.
func (c *Codec) DataConverter() converter.DataConverter {
	return converter.NewCodecDataConverter(converter.GetDefaultDataConverter(), c)
}

// FailureConverter keeps failures' messages, stack traces and types sealed
// with this codec too: an activity's error carries a service's words (what
// it refused and why), and its type the refusal's reason
// (FAMILY_IN_TREATMENT, SAFETY_SCREEN_REQUIRED), which Temporal would
// otherwise store in clear in the history of a workflow named for the
// family; types are sealed on writing only with SealFailureTypes, and read
// sealed or not. Workflows still branch on the type: it is opened again
// before they see the error. The server needs none of them: a
// non-retryable error says so in a flag of its own.
func (c *Codec) FailureConverter() converter.FailureConverter {
	dc := c.DataConverter()
	return sealedTypes{inner: temporal.NewDefaultFailureConverter(temporal.DefaultFailureConverterOptions{
		DataConverter: dc, EncodeCommonAttributes: true}), dc: dc, seal: c.sealTypes}
}

// sealedType stands in history for the type of an application failure,
// which travels sealed with the failure's message under typeAttr. A
// failure written before types were sealed keeps its own, and is read as
// it was.
const (
	sealedType = "Sealed"
	typeAttr   = "handoff_type"
)

// sealedTypes is a failure converter that seals each application failure's
// type beside its message (in the failure's encoded attributes).
type sealedTypes struct {
	inner converter.FailureConverter
	dc    converter.DataConverter
	seal  bool
}

func (fc sealedTypes) ErrorToFailure(err error) *failurepb.Failure {
	f := fc.inner.ErrorToFailure(err)
	if !fc.seal || f == nil {
		return f
	}
	// A copy: for an error read from a failure the SDK keeps that failure
	// inside it, and may convert it again.
	f = proto.Clone(f).(*failurepb.Failure)
	for n := f; n != nil; n = n.GetCause() {
		info := n.GetApplicationFailureInfo()
		if info == nil || info.GetType() == "" || info.GetType() == sealedType {
			continue
		}
		attrs := map[string]any{}
		if n.GetEncodedAttributes() != nil {
			if err := fc.dc.FromPayload(n.GetEncodedAttributes(), &attrs); err != nil {
				attrs = map[string]any{"message": n.GetMessage()}
			}
		}
		attrs[typeAttr] = info.GetType()
		p, err := fc.dc.ToPayload(attrs)
		if err != nil {
			// Sealing fails only with the codec, which has just sealed the
			// message: the type stays as it was, for workflows to branch
			// on, rather than be lost.
			continue
		}
		n.EncodedAttributes, info.Type = p, sealedType
	}
	return f
}

func (fc sealedTypes) FailureToError(f *failurepb.Failure) error {
	if f == nil {
		return fc.inner.FailureToError(f)
	}
	// A copy: the failure may be the SDK's record of a history event.
	f = proto.Clone(f).(*failurepb.Failure)
	for n := f; n != nil; n = n.GetCause() {
		info := n.GetApplicationFailureInfo()
		if info.GetType() != sealedType || n.GetEncodedAttributes() == nil {
			continue
		}
		var attrs map[string]any
		if err := fc.dc.FromPayload(n.GetEncodedAttributes(), &attrs); err == nil {
			if t, ok := attrs[typeAttr].(string); ok {
				info.Type = t
			}
		}
	}
	return fc.inner.FailureToError(f)
}

// maxDecodeBody bounds a decode request: Temporal refuses payloads over
// 2 MiB, and the UI sends one event's payloads at a time.
const maxDecodeBody = 8 << 20

// Refusal is an authorize error that tells the caller a status other than
// 401: 403 for a good token without the right, 503 for one that cannot be
// checked now. Any other error is a 401.
type Refusal struct {
	Status int
	Reason string
}

func (r *Refusal) Error() string { return r.Reason }

// Handler serves the decode half of the remote codec protocol the Temporal
// Web UI and CLI use to show payloads. authorize names the one clinic the
// caller may see. Payloads are shared by every clinic in a namespace, so a
// payload is shown only when it names the caller's clinic and no other;
// any other (another clinic's, or one that names none, such as an
// outcome) is returned still sealed. Encoding is not served: nothing
// outside the workers has reason to seal payloads with the clinic's key.
//
// opened, if not nil, is told after each decode how many payloads were
// opened for the caller's clinic and how many were left as they came: the
// access's record, with what authorize logged of the caller.
func (c *Codec) Handler(authorize func(*http.Request) (clinic string, err error), opened func(r *http.Request, clinic string, opened, left int)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		clinic, err := authorize(r)
		if err != nil {
			status := http.StatusUnauthorized
			var rf *Refusal
			if errors.As(err, &rf) && rf.Status >= 400 && rf.Status <= 599 {
				status = rf.Status
			}
			if status == http.StatusServiceUnavailable {
				w.Header().Set("Retry-After", "5")
			}
			http.Error(w, err.Error(), status)
			return
		}
		if !strings.HasSuffix(r.URL.Path, "/decode") {
			http.NotFound(w, r)
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, maxDecodeBody)
		cc := clinicCodec{Codec: c, clinic: clinic}
		if opened != nil {
			cc.opened = func(n, left int) { opened(r, clinic, n, left) }
		}
		converter.NewPayloadCodecHTTPHandler(cc).ServeHTTP(w, r)
	})
}

// clinicRef finds the clinic of resource names and of Clinic fields in a
// decoded JSON payload.
var clinicRef = regexp.MustCompile(`clinics/([a-z0-9][a-z0-9-]{0,62})|"Clinic":"([^"]*)"`)

// clinicCodec opens only payloads that name its clinic and no other.
type clinicCodec struct {
	*Codec
	clinic string
	opened func(opened, left int)
}

func (cc clinicCodec) Decode(payloads []*commonpb.Payload) ([]*commonpb.Payload, error) {
	out, err := cc.Codec.decode(payloads, true)
	if err != nil {
		return nil, err
	}
	n := 0
	for i, p := range out {
		switch {
		case p == payloads[i]:
		case cc.owns(p.GetData()):
			n++
		default:
			out[i] = payloads[i]
		}
	}
	if cc.opened != nil {
		cc.opened(n, len(out)-n)
	}
	return out, nil
}

// owns reports whether data names the codec's clinic and no other.
func (cc clinicCodec) owns(data []byte) bool {
	refs := clinicRef.FindAllSubmatch(data, -1)
	for _, m := range refs {
		if string(m[1])+string(m[2]) != cc.clinic {
			return false
		}
	}
	return len(refs) > 0
}
