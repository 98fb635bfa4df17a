-- GET /session/{id} for the ids given as arguments, in turn; each thread
-- walks them from its own offset, so that requests spread over every id
-- (and, in a fleet, over every worker).
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
  return wrk.format("GET", "/session/" .. ids[i])
end
