// One room: a Y.Doc, its YPartyKitProvider, and what the user should be
// told about the connection. The provider and the Yjs code are exactly what
// a PartyKit app has; only the host string points at Partyline.
import * as Y from 'yjs'
import YPartyKitProvider, { messageAuth } from 'y-partykit/provider'
import * as authProtocol from 'y-protocols/auth'
import { accessTo, type Profile } from './api'

export type Status = 'connecting' | 'connected' | 'access denied'

export interface Connection {
  readonly room: string
  readonly doc: Y.Doc
  readonly provider: YPartyKitProvider
  readonly status: Status
  /** Whether a socket to the room was ever open (false: not one byte of it came in). */
  readonly everConnected: boolean
  /** Reasons the server gave for refusing our edits ("read-only: …"). */
  readonly denials: string[]
  onChange(listener: () => void): void
  destroy(): void
}

export function connect(room: string, user: Profile): Connection {
  const doc = new Y.Doc()
  const provider = new YPartyKitProvider(__PARTY_HOST__, room, doc, {
    // Sent as ?token=… on every connect; Partyline passes it (and every other
    // query parameter) to the auth webhook. Here the token is the user id;
    // a real app passes its session token, or a function returning a fresh
    // one: `params: async () => ({ token: await getToken() })`.
    params: { token: user.id },
    // Tabs of one browser would otherwise share the document over
    // BroadcastChannel, bypassing the server and its permissions (this demo
    // switches users with ?user= in the same browser).
    disableBc: true,
  })
  provider.awareness.setLocalStateField('user', { id: user.id, name: user.name, color: user.color })

  const listeners = new Set<() => void>()
  const changed = () => listeners.forEach((listener) => listener())
  let status: Status = 'connecting'
  let everConnected = false
  let destroyed = false
  let checking = false
  const denials: string[] = []
  const setStatus = (next: Status) => {
    if (status === next) return
    status = next
    changed()
  }

  provider.on('status', ({ status: wsStatus }: { status: string }) => {
    if (status === 'access denied') return
    if (wsStatus === 'connected') everConnected = true
    setStatus(wsStatus === 'connected' ? 'connected' : 'connecting')
  })
  provider.on('sync', () => changed())

  // Partyline refuses a client before the WebSocket upgrade (HTTP 403 from
  // the auth webhook's answer), so the browser only sees a socket that
  // closed before it opened (code 1006) — the same as when the server is
  // down. Ask our own backend which one it was: no access → stop retrying.
  provider.on('connection-close', () => {
    // Emitted before the provider updates its state: wsconnected still says
    // whether this socket had opened.
    if (destroyed || provider.wsconnected || checking) return
    checking = true
    accessTo(room, user.id)
      .then((access) => {
        if (destroyed || access !== 'none') return
        provider.disconnect()
        setStatus('access denied')
      })
      .catch(() => {}) // backend down too: keep trying
      .finally(() => {
        checking = false
      })
  })

  // The server tells a read-only session that writes (and drops its edit)
  // with an auth "permission denied" message; y-partykit only logs it.
  provider.messageHandlers[messageAuth] = (_encoder, decoder, _provider) => {
    authProtocol.readAuthMessage(decoder, doc, (_doc, reason) => {
      denials.push(reason)
      changed()
    })
  }

  return {
    room,
    doc,
    provider,
    get status() {
      return status
    },
    get everConnected() {
      return everConnected
    },
    denials,
    onChange(listener) {
      listeners.add(listener)
    },
    destroy() {
      destroyed = true
      listeners.clear()
      // The provider first: it tells the room we left (awareness) and closes
      // the socket; then the document.
      provider.destroy()
      doc.destroy()
    },
  }
}
