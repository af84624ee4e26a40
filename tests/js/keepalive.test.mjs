// A lone client must stay connected: the stock clients close a socket that received nothing for
// 30 s (pings do not count); only the server's echo of the client's own 15 s awareness renewal
// keeps it alive.
import assert from 'node:assert/strict'
import { useServer, uniqueRoom, waitAllSynced, sleep } from './helpers.mjs'

const ctx = useServer()

const HOLD_MS = 40_000

const watch = (provider) => {
  const log = { status: [], closes: 0, errors: 0, synced: [], sockets: new Set() }
  provider.on('status', (e) => log.status.push(e.status))
  provider.on('connection-close', () => { log.closes++ })
  provider.on('connection-error', () => { log.errors++ })
  provider.on('synced', (s) => log.synced.push(s))
  return log
}

ctx.test(`a lone client stays connected for ${HOLD_MS / 1000} s without reconnecting`, { timeout: HOLD_MS + 20_000 }, async (_t, clients) => {
  const ws = clients.ws(uniqueRoom('lone-ws'))
  const pk = clients.pk(uniqueRoom('lone-pk'))
  await waitAllSynced([ws.provider, pk.provider])
  const logs = [watch(ws.provider), watch(pk.provider)]
  const sockets = [ws.provider.ws, pk.provider.ws]
  ws.doc.getText('text').insert(0, 'x') // one edit, then silence from the app

  // sample the socket identity every second so a quick close+reconnect cannot slip through
  const t0 = Date.now()
  const deadline = t0 + HOLD_MS
  while (Date.now() < deadline) {
    await sleep(1000)
    const s = ((Date.now() - t0) / 1000).toFixed(0)
    assert.ok(ws.provider.ws === sockets[0], `y-websocket socket was closed/replaced after ~${s} s (status events: ${logs[0].status})`)
    assert.ok(pk.provider.ws === sockets[1], `y-partykit socket was closed/replaced after ~${s} s (status events: ${logs[1].status})`)
  }
  for (const [name, p, log] of [['y-websocket', ws.provider, logs[0]], ['y-partykit', pk.provider, logs[1]]]) {
    assert.equal(log.closes, 0, `${name}: connection-close events: ${log.closes}`)
    assert.deepEqual(log.status, [], `${name}: status events after sync: ${log.status}`)
    assert.deepEqual(log.synced, [], `${name}: synced events after sync: ${log.synced}`)
    assert.equal(p.wsconnected, true, `${name}: still connected`)
    assert.equal(p.synced, true, `${name}: still synced`)
    assert.equal(p.ws.readyState, 1, `${name}: socket OPEN`)
  }
  // the server is still talking to it
  assert.ok(Date.now() - ws.provider.wsLastMessageReceived < 20_000, 'y-websocket received something in the last 20 s')
})
