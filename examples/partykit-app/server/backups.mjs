// The latest state of each room, as Partyline's state callback sends it
// (docs/webhooks.md in the Partyline repository):
//
//   {"room": "doc-1", "epoch": 7, "taken_unix_ms": 1764680000123,
//    "state": "<base64 Yjs update v1>", "data": {...}}
//
// Each state is the whole document, so keeping the newest one per room is
// enough. Callbacks may arrive out of order (a retry from a node that just
// gave the room away lands after the new owner's first one): the one with
// the higher (epoch, taken_unix_ms) wins.
import { createHmac, timingSafeEqual } from 'node:crypto'
import { mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'

/** Signatures older (or newer) than this are refused: a replayed callback. */
const SIGNATURE_TOLERANCE_S = 300

/**
 * Checks a Standard Webhooks signature (https://www.standardwebhooks.com),
 * as Partyline signs every webhook with `--webhook-secret whsec_<base64>`:
 * `webhook-signature` holds space-separated `v1,<base64 HMAC-SHA256 of
 * "<webhook-id>.<webhook-timestamp>.<raw body>">` (one per secret while a
 * new one is rotated in), keyed with the secret's decoded bytes. Any
 * Standard Webhooks library (npm `standardwebhooks`) does the same.
 * @param {string} secret `whsec_<base64>`
 * @param {{ id?: string, timestamp?: string, signature?: string }} headers
 * @param {Buffer} rawBody
 * @param {number} [nowS]
 * @returns {string | null} why it is refused, or null when it is good
 */
export function signatureProblem(secret, { id, timestamp, signature }, rawBody, nowS = Date.now() / 1000) {
  if (!id || !timestamp || !signature) return 'missing webhook-id, webhook-timestamp or webhook-signature'
  const t = Number(timestamp)
  if (!Number.isInteger(t)) return 'malformed signature'
  if (Math.abs(nowS - t) > SIGNATURE_TOLERANCE_S) return 'signature too old'
  const key = Buffer.from(secret.replace(/^whsec_/, ''), 'base64')
  const expected = createHmac('sha256', key).update(`${id}.${timestamp}.`).update(rawBody).digest()
  const matches = signature.split(' ').some((entry) => {
    const [version, value] = entry.split(',')
    const given = Buffer.from(value ?? '', 'base64')
    return version === 'v1' && given.length === expected.length && timingSafeEqual(given, expected)
  })
  return matches ? null : 'bad signature'
}

/**
 * @param {any} body
 * @returns {string | null} what is wrong with a callback body, or null
 */
export function bodyProblem(body) {
  if (!body || typeof body !== 'object') return 'not a JSON object'
  if (typeof body.room !== 'string' || body.room === '') return 'no room'
  if (!Number.isSafeInteger(body.epoch) || body.epoch < 0) return 'no epoch'
  if (!Number.isSafeInteger(body.taken_unix_ms) || body.taken_unix_ms < 0) return 'no taken_unix_ms'
  if (typeof body.state !== 'string') return 'no state'
  return null
}

export class BackupStore {
  /** @param {string} dir */
  constructor(dir) {
    this.dir = dir
    mkdirSync(dir, { recursive: true })
  }

  /** @param {string} room */
  file(room) {
    // One file per room; encodeURIComponent keeps "/" and ".." out of the name.
    return join(this.dir, `${encodeURIComponent(room).replaceAll('.', '%2E')}.json`)
  }

  /** @param {string} room */
  get(room) {
    try {
      return JSON.parse(readFileSync(this.file(room), 'utf8'))
    } catch (error) {
      if (/** @type {any} */ (error).code === 'ENOENT') return null
      throw error
    }
  }

  /**
   * Stores the callback's state unless a newer one is kept already.
   * Synchronous on purpose: read, compare and write happen in one turn of
   * the event loop, so two callbacks for a room never interleave.
   * @param {{room: string, epoch: number, taken_unix_ms: number, state: string, data?: unknown}} body
   * @returns {boolean} whether it was kept
   */
  put(body) {
    const current = this.get(body.room)
    if (
      current &&
      (current.epoch > body.epoch ||
        (current.epoch === body.epoch && current.taken_unix_ms >= body.taken_unix_ms))
    ) {
      return false
    }
    const record = {
      room: body.room,
      epoch: body.epoch,
      taken_unix_ms: body.taken_unix_ms,
      received_unix_ms: Date.now(),
      state: body.state,
      data: body.data ?? null,
    }
    const file = this.file(body.room)
    const tmp = `${file}.${process.pid}.tmp`
    writeFileSync(tmp, JSON.stringify(record))
    renameSync(tmp, file)
    return true
  }
}
