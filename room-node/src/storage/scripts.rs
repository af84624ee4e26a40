//! The remote backend's Lua scripts. Every script that writes first checks
//! the slot's epoch (`{prefix}:slot:{slot}:epoch`): a node whose epoch is
//! stale appends, registers, trims and deletes nothing, and gets the error
//! `FENCED <epoch>` (fencing; docs/storage.md).

use redis::Script;

/// The fenced scripts, loaded once per node.
pub(super) struct Scripts {
    /// [`CLAIM`].
    pub(super) claim: Script,
    /// [`APPEND`].
    pub(super) append: Script,
    /// [`REGISTER`].
    pub(super) register: Script,
    /// [`DELETE`].
    pub(super) delete: Script,
    /// [`TOMBSTONE`].
    pub(super) tombstone: Script,
    /// [`RESTORE`].
    pub(super) restore: Script,
}

impl Scripts {
    /// Every script, hashed once.
    pub(super) fn new() -> Self {
        Self {
            claim: Script::new(CLAIM),
            append: Script::new(APPEND),
            register: Script::new(REGISTER),
            delete: Script::new(DELETE),
            tombstone: Script::new(TOMBSTONE),
            restore: Script::new(RESTORE),
        }
    }
}

/// Takes the slot for `epoch` unless a newer epoch holds it; returns the
/// epoch that holds it afterwards.
const CLAIM: &str = r"
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local ours = tonumber(ARGV[1])
if current > ours then return current end
redis.call('SET', KEYS[1], ARGV[1])
return ours
";

/// KEYS: slot epoch, log, room index. ARGV: epoch, room, index it (1/0),
/// then the updates. Fenced like REGISTER: once a newer epoch claimed the
/// slot, a stale owner (cut off from the coordinator, still reached by a
/// gateway on an old map) appends nothing, so the new owner's snapshot can
/// never "cover" an entry it does not contain. Returns the last entry id.
const APPEND: &str = r"
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current > tonumber(ARGV[1]) then
  return redis.error_reply('FENCED ' .. current)
end
local id
for i = 4, #ARGV do
  id = redis.call('XADD', KEYS[2], '*', 'u', ARGV[i])
end
if ARGV[3] == '1' then
  redis.call('ZADD', KEYS[3], 0, ARGV[2])
end
return id
";

/// KEYS: slot epoch, snapshot list, log, versions hash. ARGV: epoch,
/// entry, keep, max age in ms (0: none; the newest two always stay), the
/// snapshot's name and its metadata (JSON, kept in the versions hash while
/// the snapshot is listed). Fenced: a stale epoch changes nothing. Returns
/// the entries dropped from the list (to delete), or an error
/// 'FENCED <epoch>'.
const REGISTER: &str = r"
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current > tonumber(ARGV[1]) then
  return redis.error_reply('FENCED ' .. current)
end
local keep = tonumber(ARGV[3])
redis.call('LPUSH', KEYS[2], ARGV[2])
redis.call('HSET', KEYS[4], ARGV[5], ARGV[6])
local dropped = redis.call('LRANGE', KEYS[2], keep, -1)
redis.call('LTRIM', KEYS[2], 0, keep - 1)
local max_age = tonumber(ARGV[4])
if max_age > 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local all = redis.call('LRANGE', KEYS[2], 2, -1)
  for _, entry in ipairs(all) do
    local ms = tonumber(string.match(entry, '^(%d+)%-'))
    if ms and now - ms > max_age then
      redis.call('LREM', KEYS[2], 1, entry)
      table.insert(dropped, entry)
    end
  end
end
for _, entry in ipairs(dropped) do
  local name = string.match(entry, '^%S+ (.+)$')
  if name then redis.call('HDEL', KEYS[4], name) end
end
local previous = redis.call('LINDEX', KEYS[2], 1)
if previous then
  local covered = string.match(previous, '^(%S+)')
  if covered and covered ~= '0' then
    redis.call('XTRIM', KEYS[3], 'MINID', covered)
  end
end
return dropped
";

/// KEYS: slot epoch, snapshot list, log, room index, versions hash,
/// tombstone, tombstone index. ARGV: epoch, room. Fenced like REGISTER.
/// Returns the snapshot entries (their blobs to delete) and deletes the
/// list, the log, the versions' metadata, the tombstone and the index
/// entries.
const DELETE: &str = r"
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current > tonumber(ARGV[1]) then
  return redis.error_reply('FENCED ' .. current)
end
local entries = redis.call('LRANGE', KEYS[2], 0, -1)
redis.call('DEL', KEYS[2], KEYS[3], KEYS[5], KEYS[6])
redis.call('ZREM', KEYS[4], ARGV[2])
redis.call('ZREM', KEYS[7], ARGV[2])
return entries
";

/// KEYS: slot epoch, tombstone, tombstone index, room index. ARGV: epoch,
/// room, the tombstone (JSON), when it is purged (Unix ms). Fenced. Marks
/// the room deleted, indexes it by expiry and unlists it.
const TOMBSTONE: &str = r"
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current > tonumber(ARGV[1]) then
  return redis.error_reply('FENCED ' .. current)
end
redis.call('SET', KEYS[2], ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[2])
redis.call('ZREM', KEYS[4], ARGV[2])
return 1
";

/// KEYS: slot epoch, tombstone, tombstone index, room index, log, snapshot
/// list. ARGV: epoch, room. Fenced. Takes the tombstone away and lists the
/// room again when it has anything stored.
const RESTORE: &str = r"
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current > tonumber(ARGV[1]) then
  return redis.error_reply('FENCED ' .. current)
end
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[2])
if redis.call('EXISTS', KEYS[5], KEYS[6]) > 0 then
  redis.call('ZADD', KEYS[4], 0, ARGV[2])
end
return 1
";
