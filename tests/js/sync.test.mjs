// Document sync with the stock y-websocket client: convergence, late joiners, isolation,
// offline edits, `synced` on an empty room.
import assert from 'node:assert/strict'
import { useServer, uniqueRoom, waitFor, waitSynced, waitAllSynced, content, stateVector, sleep, Y } from './helpers.mjs'

const ctx = useServer()

ctx.test('two y-websocket clients converge on concurrent Y.Text and Y.Map edits', async (_t, clients) => {
  const room = uniqueRoom('converge')
  const docA = new Y.Doc()
  const docB = new Y.Doc()
  // edits made before either client is connected
  docA.getText('text').insert(0, 'hello from A. ')
  docB.getText('text').insert(0, 'hello from B. ')
  docA.getMap('map').set('shared', 'A')
  docB.getMap('map').set('shared', 'B')
  const a = clients.ws(room, { doc: docA })
  const b = clients.ws(room, { doc: docB })
  // edits made while the sockets are still connecting (sync not complete on either side)
  assert.equal(a.provider.synced, false)
  assert.equal(b.provider.synced, false)
  for (let i = 0; i < 20; i++) {
    docA.transact(() => {
      docA.getText('text').insert(docA.getText('text').length, `a${i} `)
      docA.getMap('map').set(`a${i}`, i)
    })
    docB.transact(() => {
      docB.getText('text').insert(0, `b${i} `)
      docB.getMap('map').set(`b${i}`, { n: i, from: 'B' })
    })
  }
  docA.getArray('array').push(['A1', 'A2'])
  docB.getArray('array').insert(0, ['B1'])

  await waitAllSynced([a.provider, b.provider])
  // concurrent edits after sync too
  docA.getText('text').insert(0, '[A-after]')
  docB.getText('text').insert(docB.getText('text').length, '[B-after]')
  docA.getMap('map').delete('a0')

  await waitFor(() => content(docA) === content(docB) && stateVector(docA) === stateVector(docB), {
    timeout: 10_000,
    what: () => `convergence\nA=${content(docA)}\nB=${content(docB)}`
  })
  const text = docA.getText('text').toString()
  for (const s of ['hello from A.', 'hello from B.', 'a19 ', 'b19 ', '[A-after]', '[B-after]']) {
    assert.ok(text.includes(s), `text should contain ${JSON.stringify(s)}: ${text}`)
  }
  const map = docB.getMap('map').toJSON()
  assert.equal(Object.keys(map).length, 1 + 19 + 20, `map keys: ${Object.keys(map)}`)
  assert.ok(!('a0' in map))
  assert.deepEqual(map.b7, { n: 7, from: 'B' })
  assert.ok(['A', 'B'].includes(map.shared))
  assert.deepEqual([...docB.getArray('array').toArray()].sort(), ['A1', 'A2', 'B1'])
  // the merged binary state decodes to the same content
  const merged = new Y.Doc()
  Y.applyUpdate(merged, Y.encodeStateAsUpdate(docB))
  assert.equal(content(merged), content(docA))
  merged.destroy()
})

ctx.test('a late joiner gets 1,000 earlier ops', async (_t, clients) => {
  const room = uniqueRoom('late')
  const a = clients.ws(room)
  await waitSynced(a.provider)
  const text = a.doc.getText('text')
  const map = a.doc.getMap('map')
  for (let i = 0; i < 1000; i++) {
    // 1000 separate transactions, each sent as its own update message
    if (i % 2 === 0) text.insert(text.length, `${i},`)
    else map.set(`k${i}`, i)
  }
  // an observer on the server side of things: wait until a second live client has everything,
  // so we know the server has processed the whole stream before the late joiner connects
  const w = clients.ws(room)
  await waitFor(() => content(w.doc) === content(a.doc), { timeout: 15_000, what: 'witness has all 1000 ops' })

  const b = clients.ws(room)
  await waitSynced(b.provider)
  await waitFor(() => content(b.doc) === content(a.doc), {
    timeout: 10_000,
    what: () => `late joiner content (text length ${b.doc.getText('text').length} vs ${text.length})`
  })
  const expectedText = Array.from({ length: 500 }, (_, j) => `${2 * j},`).join('')
  assert.equal(b.doc.getText('text').toString(), expectedText)
  assert.equal(b.doc.getMap('map').size, 500)
  assert.equal(b.doc.getMap('map').get('k999'), 999)
  assert.equal(stateVector(b.doc), stateVector(a.doc))
})

ctx.test('rooms are isolated', async (_t, clients) => {
  const base = uniqueRoom('iso')
  const roomX = base
  const roomY = `${base}-y`
  const roomZ = `${base}x` // shares a prefix with X
  const x1 = clients.ws(roomX)
  const x2 = clients.ws(roomX)
  const y1 = clients.ws(roomY)
  const z1 = clients.ws(roomZ)
  await waitAllSynced([x1.provider, x2.provider, y1.provider, z1.provider])

  x1.doc.getText('text').insert(0, 'only in X')
  x1.doc.getMap('map').set('room', 'X')
  y1.doc.getMap('map').set('room', 'Y')
  z1.doc.getMap('map').set('room', 'Z')
  await waitFor(() => x2.doc.getText('text').toString() === 'only in X' && x2.doc.getMap('map').get('room') === 'X', {
    timeout: 5000, what: 'X edit reaches the other X client'
  })
  await sleep(300) // give a leaking broadcast time to arrive
  assert.equal(y1.doc.getText('text').toString(), '')
  assert.equal(y1.doc.getMap('map').get('room'), 'Y')
  assert.equal(z1.doc.getText('text').toString(), '')
  assert.equal(z1.doc.getMap('map').get('room'), 'Z')

  // fresh joiners of Y and Z see only their own room
  const y2 = clients.ws(roomY)
  const z2 = clients.ws(roomZ)
  await waitAllSynced([y2.provider, z2.provider])
  await waitFor(() => y2.doc.getMap('map').get('room') === 'Y' && z2.doc.getMap('map').get('room') === 'Z', {
    timeout: 5000, what: 'Y and Z joiners get their own room state'
  })
  assert.equal(y2.doc.getText('text').toString(), '')
  assert.equal(z2.doc.getText('text').toString(), '')
  assert.deepEqual(y2.doc.getMap('map').toJSON(), { room: 'Y' })
  assert.deepEqual(z2.doc.getMap('map').toJSON(), { room: 'Z' })
  // and X's doc never got Y's or Z's key
  assert.deepEqual(x2.doc.getMap('map').toJSON(), { room: 'X' })
})

ctx.test('offline edits are delivered after reconnect', async (_t, clients) => {
  const room = uniqueRoom('offline')
  const a = clients.ws(room)
  const b = clients.ws(room)
  await waitAllSynced([a.provider, b.provider])
  a.doc.getText('text').insert(0, 'online.')
  await waitFor(() => b.doc.getText('text').toString() === 'online.', { what: 'online edit reaches B' })

  a.provider.disconnect()
  await waitFor(() => !a.provider.wsconnected && a.provider.ws === null, { what: 'A disconnected' })
  // A edits while offline; B edits concurrently
  for (let i = 0; i < 10; i++) a.doc.getText('text').insert(a.doc.getText('text').length, ` off${i}`)
  a.doc.getMap('map').set('offline', true)
  b.doc.getMap('map').set('fromB', 'while A was away')
  await sleep(300)
  assert.equal(b.doc.getText('text').toString(), 'online.', 'offline edits must not reach B before reconnect')
  assert.equal(a.doc.getMap('map').get('fromB'), undefined)

  a.provider.connect()
  await waitSynced(a.provider)
  await waitFor(() => content(a.doc) === content(b.doc), {
    timeout: 10_000, what: () => `convergence after reconnect\nA=${content(a.doc)}\nB=${content(b.doc)}`
  })
  assert.equal(b.doc.getText('text').toString(), 'online. off0 off1 off2 off3 off4 off5 off6 off7 off8 off9')
  assert.equal(b.doc.getMap('map').get('offline'), true)
  assert.equal(a.doc.getMap('map').get('fromB'), 'while A was away')

  // and a fresh client sees the offline edits too (they reached the server, not only B)
  const c = clients.ws(room)
  await waitSynced(c.provider)
  await waitFor(() => content(c.doc) === content(a.doc), { what: 'fresh client has offline edits' })
})

ctx.test('synced fires on an empty (new) room', async (_t, clients) => {
  const room = uniqueRoom('empty')
  const { doc, provider } = clients.ws(room, { connect: false })
  const events = []
  provider.on('synced', (s) => events.push(s))
  provider.connect()
  await waitFor(() => events.includes(true), { timeout: 5000, what: '`synced` event on an empty room' })
  assert.equal(provider.synced, true)
  assert.equal(doc.getText('text').toString(), '')
  assert.equal(Y.encodeStateVector(doc).length, 1, 'doc stays empty (state vector of length 0)')
  // the same for a y-partykit client on a new room
  const pk = clients.pk(uniqueRoom('empty-pk'))
  await waitSynced(pk.provider, 5000)
})
