package events

import "encoding/json"

// MovedEventType is the type of the event that tells clients a session
// changed workers (an operator moved it, or drained its worker): it lives
// on, with its history, and nothing needs to be read again.
const MovedEventType = "session_ids.moved"

// MovedEvent is a session_ids.moved event as an SSE frame, shaped like the
// stream's own events: {"type", "properties": {"sessionID", "from", "to"}}
// on /event, wrapped in {"payload"} on /global/event (global).
func MovedEvent(sessionID, from, to string, global bool) []byte {
	var event any = map[string]any{"type": MovedEventType, "properties": map[string]string{"sessionID": sessionID, "from": from, "to": to}}
	if global {
		event = map[string]any{"payload": event}
	}
	data, _ := json.Marshal(event)
	return append(append([]byte("data: "), data...), '\n', '\n')
}
