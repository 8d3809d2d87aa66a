// A plain textarea whose text is drawn by an overlay behind it, so that a completion can sit in grey
// right after the cursor (ghost text) without being part of the value until Tab accepts it. The
// textarea's own glyphs are transparent; its caret and selection stay the browser's.
export class GhostEditor {
  constructor(root, handlers) {
    this.root = root;
    this.textarea = root.querySelector("#code");
    this.overlay = root.querySelector("#overlay");
    this.before = root.querySelector("#before");
    this.ghostSpan = root.querySelector("#ghost");
    this.after = root.querySelector("#after");
    this.handlers = handlers; // onEdit(), onDismiss()
    this.ghost = "";
    this.anchor = null; // the caret position the ghost belongs to
    this.textarea.addEventListener("input", () => this.edited());
    this.textarea.addEventListener("keydown", (event) => this.keydown(event));
    this.textarea.addEventListener("scroll", () => this.syncScroll());
    // the caret moved away from where the completion was asked for: it no longer applies
    for (const name of ["keyup", "mouseup", "blur"]) this.textarea.addEventListener(name, () => this.caretMoved());
    this.render();
  }

  get value() {
    return this.textarea.value;
  }

  get caret() {
    return this.textarea.selectionStart;
  }

  get hasSelection() {
    return this.textarea.selectionStart !== this.textarea.selectionEnd;
  }

  // the text before and after the cursor: the prompt and, for a model that fills in the middle, the suffix
  get prefix() {
    return this.value.slice(0, this.caret);
  }

  get suffix() {
    return this.value.slice(this.textarea.selectionEnd);
  }

  startGhost() {
    this.anchor = this.caret;
    this.setGhost("");
  }

  appendGhost(text) {
    if (this.anchor !== this.caret) return;
    this.setGhost(this.ghost + text);
  }

  setGhost(text) {
    this.ghost = text;
    this.render();
  }

  clearGhost() {
    this.anchor = null;
    this.setGhost("");
  }

  accept() {
    const text = this.ghost;
    const at = this.caret;
    this.clearGhost();
    this.textarea.setRangeText(text, at, at, "end");
    this.render();
    this.handlers.onEdit();
  }

  edited() {
    this.clearGhost();
    this.handlers.onEdit();
  }

  caretMoved() {
    if (this.anchor !== null && this.anchor !== this.caret) {
      this.clearGhost();
      this.handlers.onDismiss("the cursor moved");
    }
  }

  keydown(event) {
    if (event.key === "Tab" && !event.shiftKey && !event.ctrlKey && !event.altKey && !event.metaKey) {
      event.preventDefault(); // a code editor keeps focus on Tab
      if (this.ghost) this.accept();
      else {
        this.textarea.setRangeText("    ", this.textarea.selectionStart, this.textarea.selectionEnd, "end");
        this.edited();
      }
    } else if (event.key === "Escape") {
      event.preventDefault();
      this.clearGhost();
      this.handlers.onDismiss("dismissed");
    }
  }

  render() {
    const value = this.value;
    const at = this.ghost ? this.anchor : value.length;
    this.before.textContent = value.slice(0, at);
    this.ghostSpan.textContent = this.ghost;
    // a trailing space: a last empty line still takes its height, as it does in the textarea
    this.after.textContent = value.slice(at) + " ";
    this.syncScroll();
  }

  syncScroll() {
    this.overlay.scrollTop = this.textarea.scrollTop;
    this.overlay.scrollLeft = this.textarea.scrollLeft;
  }
}
