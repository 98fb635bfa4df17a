// Package upstream is the contract between the session_ids handler, the
// session_ids selection policy and the subsystems that talk to workers
// (fleet, events, idempotency): how a request of the module's own reaches a
// worker through the rest of Caddy's route, and what comes back.
//
//   - Route is one request's routing, shared through a request variable: the
//     handler names the worker a request must reach, the policy reports the
//     pool it selected from and the worker it chose, and Route.Done tells
//     whoever attached the route that the request is finished.
//   - Pool is the one view of the workers reverse_proxy balances, indexed by
//     dial address.
//   - Ask, AskWorker and AskEach send the module's own requests through next
//     (the reverse_proxy), so they get its upstream selection, health checks,
//     retries, timeouts and header_up, and capture the answer whole in an
//     Answer; an Answer with an Events callback passes an event stream on
//     event by event instead.
//   - Client is a worker client for work outside a client's request (a
//     background job, an admin call): it asks through the newest next the
//     handler has seen, with none of a client's headers.
//
// It knows nothing of ids, mappings or the handler, and imports nothing of
// this module but the error answers (internal/apierror).
package upstream
