-- POST /session without an id: the upstream's own create, a static request.
wrk.method = "POST"
wrk.path = "/session"
wrk.body = '{"title":"bench"}'
wrk.headers["Content-Type"] = "application/json"
