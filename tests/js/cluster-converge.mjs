// Run by tests/it/cluster.rs against a running cluster (not a node:test file):
//   node cluster-converge.mjs GATEWAY_A_ADDR GATEWAY_B_ADDR ROOM
// A y-websocket client through gateway A and a y-partykit client through
// gateway B edit one room concurrently; exits 0 once both documents are
// identical and hold both clients' edits, 1 on timeout.
import { Y, WebSocket, WebsocketProvider, YPartyKitProvider, content, waitFor, waitAllSynced } from './helpers.mjs'

const [addrA, addrB, room] = process.argv.slice(2)
const docA = new Y.Doc()
const docB = new Y.Doc()
const a = new WebsocketProvider(`ws://${addrA}`, room, docA, { WebSocketPolyfill: WebSocket, disableBc: true })
const b = new YPartyKitProvider(addrB, room, docB, { WebSocketPolyfill: WebSocket, disableBc: true })
let code = 1
try {
  await waitAllSynced([a, b], 15_000)
  for (let i = 0; i < 20; i++) {
    docA.getText('text').insert(0, `a${i};`)
    docB.getText('text').insert(0, `b${i};`)
    docA.getMap('map').set(`a${i}`, i)
    docB.getMap('map').set(`b${i}`, i)
  }
  await waitFor(() => {
    const text = docA.getText('text').toString()
    return content(docA) === content(docB) &&
      text.includes('a19;') && text.includes('b19;') &&
      docA.getMap('map').size === 40
  }, { timeout: 15_000, what: () => `convergence: A=${content(docA)} B=${content(docB)}` })
  console.log(`converged: ${docA.getText('text').length} chars, ${docA.getMap('map').size} keys`)
  code = 0
} catch (e) {
  console.error(e.message)
} finally {
  a.destroy()
  b.destroy()
  process.exit(code)
}
