// The shell: who the user is (?user=alice), which room is open (#doc-1,
// #diagram-1), the connection status and who else is here.
import './style.css'
import { me, type Profile, type RoomEntry } from './api'
import { connect, type Connection } from './connection'
import { mountDiagram } from './diagram'
import { mountTextEditor } from './text-editor'

const view = document.querySelector<HTMLElement>('#view')!
const statusEl = document.querySelector<HTMLElement>('#status')!
const presenceEl = document.querySelector<HTMLElement>('#presence')!
const roomsEl = document.querySelector<HTMLElement>('#rooms')!
const meEl = document.querySelector<HTMLElement>('#me')!
const noticeEl = document.querySelector<HTMLElement>('#notice')!

const userId = new URLSearchParams(location.search).get('user') || 'alice'

let current: { conn: Connection; unmount: () => void } | null = null
let profile: Profile = { id: userId, name: userId, color: '#888888' }
let rooms: RoomEntry[] = []

/** Test and debugging hooks: the open room's document, provider and status. */
const app = {
  user: userId,
  get room() {
    return current?.conn.room ?? null
  },
  get doc() {
    return current?.conn.doc ?? null
  },
  get provider() {
    return current?.conn.provider ?? null
  },
  get status() {
    return current?.conn.status ?? 'connecting'
  },
  get synced() {
    return current?.conn.provider.synced ?? false
  },
  get everConnected() {
    return current?.conn.everConnected ?? false
  },
  get denials() {
    return current?.conn.denials ?? []
  },
  open,
}
declare global {
  interface Window {
    __app: typeof app
  }
}
window.__app = app

function roomFromHash(): string {
  const room = decodeURIComponent(location.hash.slice(1))
  return room || rooms[0]?.room || 'doc-1'
}

function close() {
  if (!current) return
  // The views first (they clear our cursor while the socket is still open),
  // then provider.destroy() and doc.destroy().
  current.unmount()
  current.conn.destroy()
  current = null
}

function open(room: string) {
  close()
  noticeEl.textContent = ''
  const access = rooms.find((entry) => entry.room === room)?.access
  const readOnly = access === 'read'
  const conn = connect(room, profile)
  let unmountView: () => void = () => {}
  const mount = () => {
    if (room.startsWith('doc-')) unmountView = mountTextEditor(view, conn, readOnly)
    else if (room.startsWith('diagram-')) unmountView = mountDiagram(view, conn, readOnly)
    else view.innerHTML = `<p class="notice">Rooms are named doc-… or diagram-….</p>`
  }
  mount()
  current = { conn, unmount: () => unmountView() }

  let shownStatus = ''
  const render = () => {
    const status = conn.status
    if (status !== shownStatus) {
      shownStatus = status
      if (status === 'access denied') {
        unmountView()
        unmountView = () => {}
        view.innerHTML = ''
        const notice = document.createElement('p')
        notice.className = 'notice denied'
        notice.textContent = `${profile.name} has no access to ${room}: access denied.`
        view.append(notice)
      }
    }
    statusEl.dataset.status = status
    statusEl.textContent = readOnly && status === 'connected' ? 'connected · read-only' : status
    // The server drops a refused edit; this copy still shows it until reload.
    const denial = conn.denials.at(-1)
    noticeEl.textContent = denial ? `Your last edit was not saved (${denial})` : ''
    renderPresence(conn)
    renderRooms(room)
  }
  conn.onChange(render)
  conn.provider.awareness.on('change', () => renderPresence(conn))
  render()
}

function renderPresence(conn: Connection) {
  presenceEl.replaceChildren()
  const states = [...conn.provider.awareness.getStates().entries()].sort(([a], [b]) => a - b)
  for (const [clientId, state] of states) {
    const user = state.user as Profile | undefined
    if (!user) continue
    const li = document.createElement('li')
    li.dataset.user = user.id
    li.style.setProperty('--color', user.color)
    li.textContent = clientId === conn.doc.clientID ? `${user.name} (you)` : user.name
    presenceEl.append(li)
  }
}

function renderRooms(active: string) {
  roomsEl.replaceChildren()
  for (const entry of rooms) {
    const link = document.createElement('a')
    link.href = `#${encodeURIComponent(entry.room)}`
    link.textContent = entry.title + (entry.access === 'read' ? ' (read-only)' : '')
    if (entry.room === active) link.setAttribute('aria-current', 'page')
    roomsEl.append(link)
  }
}

async function start() {
  const session = await me(userId)
  profile = session.user
  rooms = session.rooms
  meEl.textContent = `signed in as ${profile.name}`
  meEl.style.setProperty('--color', profile.color)
  open(roomFromHash())
  window.addEventListener('hashchange', () => open(roomFromHash()))
  // Leaving the page: tell the room at once rather than when the socket dies.
  window.addEventListener('pagehide', close)
  window.addEventListener('pageshow', (event) => {
    if (event.persisted) open(roomFromHash()) // back from the back/forward cache
  })
}

start().catch((error) => {
  statusEl.textContent = 'error'
  view.textContent = `Could not start: ${error}`
})
