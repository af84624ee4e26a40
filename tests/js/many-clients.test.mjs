// 50 clients in one room converge.
import assert from 'node:assert/strict'
import { useServer, uniqueRoom, waitFor, waitAllSynced, content, stateVector, sleep } from './helpers.mjs'

const ctx = useServer()

ctx.test('50 clients in one room each make edits; all converge to identical state', { timeout: 90_000 }, async (_t, clients) => {
  const room = uniqueRoom('fifty')
  const N = 50
  const EDITS = 10
  const cs = []
  for (let i = 0; i < N; i++) {
    cs.push(clients.ws(room))
    if (i % 10 === 9) await sleep(20) // open sockets in small bursts
  }
  await waitAllSynced(cs.map((c) => c.provider), 30_000)

  // every client edits, interleaved across clients, without waiting for anything
  for (let e = 0; e < EDITS; e++) {
    cs.forEach((c, i) => {
      c.doc.transact(() => {
        const text = c.doc.getText('text')
        text.insert(e === 0 ? 0 : text.length, `[${i}:${e}]`)
        c.doc.getMap('map').set(`c${i}`, e)
        c.doc.getArray('array').push([`${i}/${e}`])
      })
    })
  }
  cs.forEach((c, i) => c.provider.awareness.setLocalStateField('user', { name: `u${i}` }))

  const ref = cs[0].doc
  await waitFor(() => {
    const want = content(ref)
    return cs.every((c) => c.doc.getArray('array').length === N * EDITS && content(c.doc) === want)
  }, {
    timeout: 60_000,
    what: () => `convergence of ${N} clients; array lengths: ${cs.map((c) => c.doc.getArray('array').length).join(',')}`
  })
  const sv = stateVector(ref)
  for (const c of cs) assert.equal(stateVector(c.doc), sv)
  const map = ref.getMap('map').toJSON()
  assert.equal(Object.keys(map).length, N)
  for (let i = 0; i < N; i++) assert.equal(map[`c${i}`], EDITS - 1)
  const text = ref.getText('text').toString()
  for (let i = 0; i < N; i++) for (let e = 0; e < EDITS; e++) assert.ok(text.includes(`[${i}:${e}]`), `missing [${i}:${e}]`)
  // everyone is still connected
  assert.ok(cs.every((c) => c.provider.wsconnected), 'all 50 providers still connected')
  // everyone sees all 50 awareness states
  await waitFor(() => cs.every((c) => c.provider.awareness.getStates().size === N), {
    timeout: 10_000, what: () => `awareness sizes: ${cs.map((c) => c.provider.awareness.getStates().size).join(',')}`
  })
})
