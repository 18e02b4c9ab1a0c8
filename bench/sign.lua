-- wrk script for bench/run.sh: POSTs a distinct JSON object in every request, signed as
-- Meta signs webhooks (X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>).
--
-- Environment: BENCH_APP_SECRET (required), the key of the HMAC; BODY_BYTES (default
-- 1024), the size of each body (the JSON is padded up to it); BODY_SHAPE (default
-- "user"): "whatsapp" sends a WhatsApp batch of two messages for two phone numbers
-- (phone_number_id 111 and 222), for the fan-out load.
-- Bodies differ in "id" (<wrk thread>-<counter>), so xhubd never sees a retry.
-- done() prints one line for run.sh:
--   WRKSTATS requests=N duration_us=N status=N connect=N read=N write=N timeout=N
--            p50_us=N p90_us=N p99_us=N max_us=N
-- where status counts answers with a status of 400 or more.

local ffi = require("ffi")
ffi.cdef[[
  typedef struct evp_md_st EVP_MD;
  const EVP_MD *EVP_sha256(void);
  unsigned char *HMAC(const EVP_MD *evp_md, const void *key, int key_len,
                      const unsigned char *data, size_t data_len,
                      unsigned char *md, unsigned int *md_len);
]]

local function load_crypto()
  for _, name in ipairs({ "crypto", "libcrypto.so.3" }) do
    local ok, lib = pcall(ffi.load, name)
    if ok then return lib end
  end
  error("cannot load OpenSSL's libcrypto")
end

local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("thread_id", threads)
end

local crypto, sha256, secret, body_bytes, shape
local md = ffi.new("unsigned char[32]")
local md_len = ffi.new("unsigned int[1]")
local hex, digits, pads = {}, {}, {}
local counter = 0
local headers = { ["Content-Type"] = "application/json" }

function init(args)
  secret = os.getenv("BENCH_APP_SECRET")
  if not secret or secret == "" then error("BENCH_APP_SECRET is not set") end
  body_bytes = tonumber(os.getenv("BODY_BYTES") or "1024")
  shape = os.getenv("BODY_SHAPE") or "user"
  crypto = load_crypto()
  sha256 = crypto.EVP_sha256()
  for i = 0, 255 do hex[i] = string.format("%02x", i) end
end

local function pad(n)
  if n < 0 then n = 0 end
  local s = pads[n]
  if not s then
    s = string.rep("x", n)
    pads[n] = s
  end
  return s
end

local function whatsapp(id)
  local head = '{"object":"whatsapp_business_account","entry":[{"id":"1","changes":['
    .. '{"value":{"messaging_product":"whatsapp","metadata":{"phone_number_id":"222"},'
    .. '"messages":[{"from":"2","id":"wamid.' .. id .. '-b","type":"text","text":{"body":"b"}}]},'
    .. '"field":"messages"},'
    .. '{"value":{"messaging_product":"whatsapp","metadata":{"phone_number_id":"111"},'
    .. '"messages":[{"from":"1","id":"wamid.' .. id .. '-a","type":"text","text":{"body":"'
  local tail = '"}}]},"field":"messages"}]}]}'
  return head .. pad(body_bytes - #head - #tail) .. tail
end

function request()
  counter = counter + 1
  local body
  if shape == "whatsapp" then
    body = whatsapp(thread_id .. "-" .. counter)
  else
    local head = '{"object":"user","entry":[{"id":"' .. thread_id .. "-" .. counter
      .. '","time":' .. os.time() .. ',"changed_fields":["photos"]}],"pad":"'
    body = head .. pad(body_bytes - #head - 2) .. '"}'
  end
  crypto.HMAC(sha256, secret, #secret, body, #body, md, md_len)
  for i = 0, 31 do digits[i + 1] = hex[md[i]] end
  headers["X-Hub-Signature-256"] = "sha256=" .. table.concat(digits)
  return wrk.format("POST", nil, headers, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRKSTATS requests=%d duration_us=%d status=%d connect=%d read=%d write=%d timeout=%d"
      .. " p50_us=%d p90_us=%d p99_us=%d max_us=%d\n",
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
