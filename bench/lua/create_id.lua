-- POST /session with a new id on every request: ses_<prefix>_<thread>_<n>,
-- the prefix (the script's argument) unique to this run of wrk.
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

local prefix, n = nil, 0
function init(args)
  prefix = args[1]
end

function request()
  n = n + 1
  local body = string.format('{"id":"ses_%s_%d_%d","title":"bench"}', prefix, tid, n)
  return wrk.format("POST", "/session", { ["Content-Type"] = "application/json" }, body)
end
