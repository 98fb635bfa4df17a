-- POST /session again for ids that exist, with the fields they were created
-- with: a replay. The arguments are the ids; each thread walks them from its
-- own offset.
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

local ids, i = {}, 0
function init(args)
  ids = args
  i = tid
end

function request()
  i = i % #ids + 1
  local body = string.format('{"id":"%s","title":"bench"}', ids[i])
  return wrk.format("POST", "/session", { ["Content-Type"] = "application/json" }, body)
end
