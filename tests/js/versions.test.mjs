// Versions through the HTTP API against `partyline dev` (embedded store,
// `history` rooms): take, list, fetch (update, JSON, ProseMirror JSON),
// restore — with real y-websocket providers live in the room, which must
// converge to the restored version without reloading, and a fresh provider
// that must read it too.
import assert from 'node:assert/strict'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { yXmlFragmentToProsemirrorJSON } from 'y-prosemirror'
import { Y, canonical, useServer, uniqueRoom, waitFor, waitSynced } from './helpers.mjs'

const KEY = 'js-test-api-key-versions-0123'
const ctx = useServer({ extraArgs: ['--api-key', KEY, '--room-mode', 'hist-=history'] })

// A second server whose `keep-` rooms keep deleted content (`gc = false`).
const configDir = fs.mkdtempSync(path.join(os.tmpdir(), 'partyline-gc-'))
const configFile = path.join(configDir, 'partyline.toml')
fs.writeFileSync(configFile, '[room_node.policies."keep-"]\ngc = false\n')
const gcCtx = useServer({ extraArgs: ['--config', configFile] })

const api = (path, { method = 'GET', body, key = KEY, headers = {} } = {}) =>
  fetch(`${ctx.server.httpUrl}${path}`, {
    method,
    body,
    headers: { ...(key ? { Authorization: `Bearer ${key}` } : {}), ...headers }
  })

const take = async (room, label) => {
  const response = await api(`/v1/rooms/${room}/versions`, {
    method: 'POST',
    body: JSON.stringify({ label }),
    headers: { 'Content-Type': 'application/json' }
  })
  assert.equal(response.status, 201, await response.clone().text())
  return response.json()
}

// Everything the app's document holds, by the types the app uses: a root
// the version never had reads as empty, as in a fresh document.
const view = (doc) => canonical({
  text: doc.getText('text').toJSON(),
  map: doc.getMap('map').toJSON(),
  list: doc.getArray('list').toJSON(),
  default: yXmlFragmentToProsemirrorJSON(doc.getXmlFragment('default')),
  extra: doc.getMap('extra').toJSON()
})

// Both live providers hold the same content, which the server has logged
// (each edit's echo reached the other provider through the server).
const settled = (a, b) => waitFor(() => view(a.doc) === view(b.doc), { what: 'providers converge' })

const paragraph = (doc, words) => {
  const p = new Y.XmlElement('paragraph')
  const t = new Y.XmlText()
  p.insert(0, [t])
  doc.getXmlFragment('default').push([p])
  t.insert(0, words)
  t.format(0, 4, { bold: true })
}

ctx.test('take, list, fetch and restore versions while two providers edit', { partylineOnly: true, timeout: 90_000 }, async (_t, clients) => {
  const room = uniqueRoom('hist')
  const a = clients.ws(room)
  const b = clients.ws(room)
  await waitSynced(a.provider)
  await waitSynced(b.provider)

  a.doc.getText('text').insert(0, 'first draft')
  a.doc.getMap('map').set('title', 'One')
  a.doc.getArray('list').push([1, { nested: true }])
  paragraph(a.doc, 'bold start of v1')
  await settled(a, b)
  const v1View = view(a.doc)
  const v1 = await take(room, 'first')
  assert.equal(v1.label, 'first')
  assert.match(v1.id, /^snapshot-[A-Za-z0-9_-]+\.bin$/)
  assert.ok(v1.size > 0 && v1.taken_at_unix_ms > 0, JSON.stringify(v1))

  b.doc.getText('text').insert(0, 'second: ')
  b.doc.getMap('map').set('title', 'Two')
  b.doc.getMap('map').set('added', 2)
  a.doc.getArray('list').delete(0, 1)
  paragraph(b.doc, 'more words in v2')
  await settled(a, b)
  const v2View = view(a.doc)
  assert.notEqual(v2View, v1View)
  const v2 = await take(room, 'second')

  // Later edits, a root the versions never had among them.
  a.doc.getText('text').delete(0, 6)
  b.doc.getMap('extra').set('late', true)
  b.doc.getXmlFragment('default').delete(0, 1)
  await settled(a, b)
  assert.notEqual(view(a.doc), v2View)

  const listed = await (await api(`/v1/rooms/${room}/versions`)).json()
  assert.equal(listed.room, room)
  const ids = listed.versions.map((v) => v.id)
  assert.ok(ids.indexOf(v2.id) >= 0 && ids.indexOf(v2.id) < ids.indexOf(v1.id), JSON.stringify(listed))
  assert.deepEqual(listed.versions.find((v) => v.id === v1.id), v1)
  assert.ok(v2.taken_at_unix_ms > v1.taken_at_unix_ms)

  // Fetched as an update, the version is what the providers held.
  const fetched = await api(`/v1/rooms/${room}/versions/${v1.id}`)
  assert.equal(fetched.status, 200)
  assert.equal(fetched.headers.get('content-type'), 'application/octet-stream')
  const bytes = new Uint8Array(await fetched.arrayBuffer())
  assert.equal(bytes.length, v1.size)
  const v1Doc = new Y.Doc()
  Y.applyUpdate(v1Doc, bytes)
  assert.equal(view(v1Doc), v1View)
  // …and as JSON and editor JSON.
  const json = await (await api(`/v1/rooms/${room}/versions/${v1.id}?format=json`)).json()
  assert.equal(json.text, 'first draft')
  assert.deepEqual(json.map, { title: 'One' })
  const pm = await (await api(`/v1/rooms/${room}/versions/${v1.id}?format=prosemirror`)).json()
  assert.deepEqual(pm.default, yXmlFragmentToProsemirrorJSON(v1Doc.getXmlFragment('default')))
  assert.equal(pm.default.content.length, 1)

  // Restore v1: both live providers converge without reloading.
  const started = performance.now()
  const restored = await api(`/v1/rooms/${room}/versions/${v1.id}/restore`, { method: 'POST' })
  assert.equal(restored.status, 204, await restored.text())
  await waitFor(() => view(a.doc) === v1View && view(b.doc) === v1View, {
    what: () => `live providers at v1: ${view(a.doc)} / ${view(b.doc)} (want ${v1View})`
  })
  console.log(`restore of v1 (${v1.size} bytes): ${(performance.now() - started).toFixed(1)} ms from the call to both live providers converged`)
  const fresh = clients.ws(room)
  await waitSynced(fresh.provider)
  assert.equal(view(fresh.doc), v1View, 'a fresh provider reads v1')
  const state = await (await api(`/v1/rooms/${room}/state?format=json`)).json()
  assert.equal(canonical(state.map), canonical(json.map))
  assert.equal(state.text, json.text)

  // The live providers go on editing from the restored content.
  a.doc.getText('text').insert(0, '>')
  await waitFor(() => b.doc.getText('text').toString() === '>first draft', { what: 'edit after restore' })

  // Restore the newer v2: every provider, the fresh one too, reads v2.
  const again = await api(`/v1/rooms/${room}/versions/${v2.id}/restore`, { method: 'POST' })
  assert.equal(again.status, 204, await again.text())
  await waitFor(() => [a, b, fresh].every((c) => view(c.doc) === v2View), {
    what: () => `providers at v2: ${[a, b, fresh].map((c) => view(c.doc)).join(' / ')} (want ${v2View})`
  })
  const late = clients.ws(room)
  await waitSynced(late.provider)
  assert.equal(view(late.doc), v2View, 'a provider joining after the second restore reads v2')
})

ctx.test('version inputs are bounded and a room without history keeps none', { partylineOnly: true }, async (_t, clients) => {
  const room = uniqueRoom('hist')
  const ws = clients.ws(room)
  await waitSynced(ws.provider)
  ws.doc.getText('text').insert(0, 'x')
  await waitFor(async () => (await api(`/v1/rooms/${room}`)).status === 200, { what: 'room stored' })

  const post = (body, path = `/v1/rooms/${room}/versions`) =>
    api(path, { method: 'POST', body, headers: { 'Content-Type': 'application/json' } })
  assert.equal((await post(JSON.stringify({ label: 'x'.repeat(201) }))).status, 400, 'label over 200 bytes')
  assert.equal((await post(JSON.stringify({ label: 'a\nb' }))).status, 400, 'control characters')
  assert.equal((await post(JSON.stringify({ other: 1 }))).status, 400, 'unknown field')
  assert.equal((await post('{"label": "' + 'y'.repeat(3000) + '"}')).status, 413, 'body over 2 KiB')
  const unlabelled = await post(undefined)
  assert.equal(unlabelled.status, 201)
  assert.equal((await unlabelled.json()).label, null)

  assert.equal((await api(`/v1/rooms/${room}/versions/nope`)).status, 400)
  assert.equal((await api(`/v1/rooms/${room}/versions/snapshot-..%2F..%2Fx.bin`)).status, 400)
  assert.equal((await api(`/v1/rooms/${room}/versions/snapshot-99999999999999999999.bin`)).status, 404)
  assert.equal((await post(undefined, `/v1/rooms/${room}/versions/snapshot-99999999999999999999.bin/restore`)).status, 404)
  assert.equal((await api(`/v1/rooms/${uniqueRoom('hist')}/versions`)).status, 404, 'unknown room')

  // A snapshot-mode room keeps no versions to take.
  const plain = uniqueRoom('doc')
  const other = clients.ws(plain)
  await waitSynced(other.provider)
  other.doc.getText('text').insert(0, 'y')
  await waitFor(async () => (await api(`/v1/rooms/${plain}`)).status === 200, { what: 'room stored' })
  const refused = await post(JSON.stringify({ label: 'no' }), `/v1/rooms/${plain}/versions`)
  assert.equal(refused.status, 409)
  assert.match((await refused.json()).error, /history/)
})

gcCtx.test('a gc = false room keeps deleted content for Y.snapshot diffs', { partylineOnly: true }, async (_t, clients) => {
  // What a client that joins later can rebuild from a snapshot taken
  // before a deletion: with gc = false the server still holds the deleted
  // text, with the default it collected it.
  const rebuilt = async (room) => {
    const probe = clients.ws(room)
    const writer = clients.ws(room, { doc: new Y.Doc({ gc: false }) })
    await waitSynced(probe.provider)
    await waitSynced(writer.provider)
    const text = writer.doc.getText('text')
    text.insert(0, 'drafted words')
    const before = Y.snapshot(writer.doc)
    text.delete(0, 8)
    // Both edits went through the server before the reader joins: it
    // learns the text from the server's state alone.
    await waitFor(() => probe.doc.getText('text').toString() === 'words', { what: 'the deletion at the server' })
    const reader = clients.ws(room, { doc: new Y.Doc({ gc: false }) })
    await waitSynced(reader.provider)
    assert.equal(reader.doc.getText('text').toString(), 'words')
    return Y.createDocFromSnapshot(reader.doc, before).getText('text').toString()
  }
  assert.equal(await rebuilt(uniqueRoom('keep')), 'drafted words')
  // The default: the deleted characters are gone from the server's state
  // (createDocFromSnapshot has only their length, or fails on them).
  let collected
  try {
    collected = await rebuilt(uniqueRoom('doc'))
  } catch (e) {
    collected = `refused: ${e.message}`
  }
  assert.notEqual(collected, 'drafted words')
})
