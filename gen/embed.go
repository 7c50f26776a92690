// Package gen holds the code and documents generated from proto/ (run
// `make generate`); this file is the only one written by hand. It embeds
// the merged OpenAPI document so the gateway can serve it.
package gen

import _ "embed"

// OpenAPI is the merged OpenAPI (Swagger 2.0) document of all three services.
//
//go:embed openapiv2/handoff.swagger.json
var OpenAPI []byte
