// Document-level permissions, read from a JSON file of users, workspaces,
// documents and diagrams (data/permissions.json):
//
//   doc-{id}      → the document's own members
//   diagram-{id}  → the members of the diagram's workspace
//
// A member is "read-write" or "read-only". Everything else is no access.
// The file is read again on every question, so editing it takes effect at
// once (Partyline caches each answer for --cache-ttl, 30 s by default, and
// an open session keeps the access it was given: the next connect is asked
// again).
import { readFileSync } from 'node:fs'

/** @typedef {'write' | 'read'} Access */

/**
 * @param {string | URL} file
 */
export function loadPermissions(file) {
  return JSON.parse(readFileSync(file, 'utf8'))
}

/**
 * The access `userId` has to `room`, or null for none.
 * @param {any} perms the parsed permissions file
 * @param {string | null | undefined} userId
 * @param {string} room
 * @returns {Access | null}
 */
export function accessTo(perms, userId, room) {
  if (!userId || !own(perms.users, userId)) return null
  let members
  let match = /^doc-(.+)$/.exec(room)
  if (match) {
    const doc = own(perms.documents, match[1])
    members = doc?.members
  } else if ((match = /^diagram-(.+)$/.exec(room))) {
    const diagram = own(perms.diagrams, match[1])
    members = diagram ? own(perms.workspaces, diagram.workspace)?.members : undefined
  }
  switch (members ? own(members, userId) : undefined) {
    case 'read-write':
      return 'write'
    case 'read-only':
      return 'read'
    default:
      return null
  }
}

/**
 * Every room `userId` may open, with its title and access.
 * @param {any} perms
 * @param {string} userId
 */
export function roomsOf(perms, userId) {
  const rooms = []
  for (const [id, doc] of Object.entries(perms.documents ?? {})) {
    rooms.push({ room: `doc-${id}`, title: doc.title ?? `Document ${id}` })
  }
  for (const [id, diagram] of Object.entries(perms.diagrams ?? {})) {
    rooms.push({ room: `diagram-${id}`, title: diagram.title ?? `Diagram ${id}` })
  }
  return rooms
    .map((entry) => ({ ...entry, access: accessTo(perms, userId, entry.room) }))
    .filter((entry) => entry.access !== null)
}

/**
 * The user's public profile, or null.
 * @param {any} perms
 * @param {string | null | undefined} userId
 */
export function userOf(perms, userId) {
  const user = userId ? own(perms.users, userId) : undefined
  return user ? { id: userId, name: user.name ?? userId, color: user.color ?? '#888888' } : null
}

/** An own property only: a room called doc-__proto__ must not find Object.prototype. */
function own(object, key) {
  return object && Object.hasOwn(object, key) ? object[key] : undefined
}
