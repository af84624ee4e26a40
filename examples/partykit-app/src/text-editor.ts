// A shared plain-text editor: a <textarea> bound to the Y.Text "content"
// with a small diff-based binding, and the other users' carets drawn over it
// from awareness (relative positions, so a caret stays at its character
// while others type before it).
import * as Y from 'yjs'
import type { Connection } from './connection'

interface CursorState {
  anchor: unknown
  head: unknown
}

interface UserState {
  id: string
  name: string
  color: string
}

const LOCAL = Symbol('textarea')

export function mountTextEditor(root: HTMLElement, conn: Connection, readOnly: boolean): () => void {
  const { doc, provider } = conn
  const awareness = provider.awareness
  const ytext = doc.getText('content')

  root.innerHTML = `
    <section class="text-editor">
      <div class="editor-box">
        <textarea spellcheck="false" aria-label="Document text"></textarea>
        <div class="carets" aria-hidden="true"></div>
      </div>
      <p class="hint"></p>
    </section>`
  const textarea = root.querySelector('textarea')!
  const overlay = root.querySelector<HTMLDivElement>('.carets')!
  const hint = root.querySelector<HTMLParagraphElement>('.hint')!
  textarea.readOnly = readOnly
  hint.textContent = readOnly ? 'You can read this document; edits are not yours to make.' : ''

  let shown = ytext.toString()
  textarea.value = shown

  // Local edits: diff the textarea against what it showed (one changed
  // range per input event) and apply that range to the Y.Text.
  const onInput = () => {
    const next = textarea.value
    let start = 0
    while (start < shown.length && start < next.length && shown[start] === next[start]) start++
    let endShown = shown.length
    let endNext = next.length
    while (endShown > start && endNext > start && shown[endShown - 1] === next[endNext - 1]) {
      endShown--
      endNext--
    }
    doc.transact(() => {
      if (endShown > start) ytext.delete(start, endShown - start)
      if (endNext > start) ytext.insert(start, next.slice(start, endNext))
    }, LOCAL)
    shown = next
    publishCaret()
  }

  // Remote edits: replace the text and carry the local selection across the
  // change, so a remote insert before the caret does not move it.
  const onText = (event: Y.YTextEvent, transaction: Y.Transaction) => {
    if (transaction.origin !== LOCAL) {
      let selStart = textarea.selectionStart
      let selEnd = textarea.selectionEnd
      let index = 0
      for (const op of event.delta) {
        if (op.retain !== undefined) {
          index += op.retain
        } else if (op.insert !== undefined) {
          const length = typeof op.insert === 'string' ? op.insert.length : 1
          if (index < selStart) selStart += length
          if (index < selEnd) selEnd += length
          index += length
        } else if (op.delete !== undefined) {
          selStart -= Math.max(0, Math.min(selStart - index, op.delete))
          selEnd -= Math.max(0, Math.min(selEnd - index, op.delete))
        }
      }
      const focused = document.activeElement === textarea
      shown = ytext.toString()
      textarea.value = shown
      if (focused) textarea.setSelectionRange(selStart, selEnd)
    }
    renderCarets()
  }
  ytext.observe(onText)

  // Our caret, for the others.
  let lastCaret = ''
  const publishCaret = () => {
    const anchor = Y.createRelativePositionFromTypeIndex(ytext, textarea.selectionStart)
    const head = Y.createRelativePositionFromTypeIndex(ytext, textarea.selectionEnd)
    const cursor: CursorState = { anchor: Y.relativePositionToJSON(anchor), head: Y.relativePositionToJSON(head) }
    const key = JSON.stringify(cursor)
    if (key === lastCaret) return
    lastCaret = key
    awareness.setLocalStateField('cursor', cursor)
  }
  const onSelectionChange = () => {
    if (document.activeElement === textarea) publishCaret()
  }
  textarea.addEventListener('input', onInput)
  textarea.addEventListener('select', publishCaret)
  textarea.addEventListener('keyup', publishCaret)
  textarea.addEventListener('mouseup', publishCaret)
  textarea.addEventListener('focus', publishCaret)
  document.addEventListener('selectionchange', onSelectionChange)

  // The others' carets: a mirror of the textarea's text (same font, size,
  // padding and wrapping, transparent) with a marker at each caret.
  const renderCarets = () => {
    const text = ytext.toString()
    const carets: { index: number; user: UserState; clientId: number }[] = []
    awareness.getStates().forEach((state, clientId) => {
      if (clientId === doc.clientID) return
      const user = state.user as UserState | undefined
      const cursor = state.cursor as CursorState | undefined
      if (!user || !cursor) return
      const head = Y.createAbsolutePositionFromRelativePosition(Y.createRelativePositionFromJSON(cursor.head), doc)
      if (!head || head.type !== ytext) return
      carets.push({ index: head.index, user, clientId })
    })
    carets.sort((a, b) => a.index - b.index || a.clientId - b.clientId)
    overlay.replaceChildren()
    let at = 0
    for (const caret of carets) {
      overlay.append(text.slice(at, caret.index))
      at = caret.index
      const marker = document.createElement('span')
      marker.className = 'remote-caret'
      marker.dataset.user = caret.user.id
      marker.dataset.index = String(caret.index)
      marker.style.setProperty('--color', caret.user.color)
      const label = document.createElement('span')
      label.className = 'caret-label'
      label.textContent = caret.user.name
      marker.append(label)
      overlay.append(marker)
    }
    overlay.append(text.slice(at), '\n')
    overlay.scrollTop = textarea.scrollTop
  }
  const onScroll = () => {
    overlay.scrollTop = textarea.scrollTop
  }
  textarea.addEventListener('scroll', onScroll)
  awareness.on('change', renderCarets)
  renderCarets()

  return () => {
    ytext.unobserve(onText)
    awareness.off('change', renderCarets)
    document.removeEventListener('selectionchange', onSelectionChange)
    awareness.setLocalStateField('cursor', null)
    root.replaceChildren()
  }
}
