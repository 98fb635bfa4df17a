// Package openapi holds the small helpers with which the handler and its
// subsystems add what they do to the upstream's OpenAPI document (GET /doc),
// each its own part.
package openapi

// Child returns m[key] as an object, creating it if it is missing.
func Child(m map[string]any, key string) map[string]any {
	c, ok := m[key].(map[string]any)
	if !ok {
		c = map[string]any{}
		m[key] = c
	}
	return c
}

// JSONResponse is an OpenAPI response with a JSON body of schema.
func JSONResponse(description string, schema map[string]any) map[string]any {
	return map[string]any{"description": description, "content": map[string]any{"application/json": map[string]any{"schema": schema}}}
}
