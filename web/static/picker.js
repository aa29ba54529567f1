// The instrument picker. A venue lists hundreds or thousands of instruments: the
// picked ones come first and always show; the rest are narrowed by the filter (every
// word must appear in the id, the description or the kind; an id equal to the text,
// then ids starting with it, rank first). The list is one stop in the tab order:
// arrows move inside it, typing there goes to the filter, "/" anywhere focuses it,
// Enter in the filter picks the first match and Escape clears it.

export class Picker {
  /**
   * @param {{list: HTMLElement, filter: HTMLInputElement, count: HTMLElement}} elements
   * @param {{onAdd: (id: string) => void, onRemove: (id: string) => void}} actions
   */
  constructor({ list, filter, count }, { onAdd, onRemove }) {
    this.list = list;
    this.filter = filter;
    this.count = count;
    this.onAdd = onAdd;
    this.onRemove = onRemove;
    this.listed = []; // ids in the server's order
    this.boxes = new Map(); // id -> checkbox
    this.text = new Map(); // id -> what the filter searches, lower case
    this.selection = []; // picked ids, in panel order
    this.roving = null; // the one checkbox of the list in the tab order
    filter.addEventListener("input", () => {
      list.scrollTop = 0;
      this.render(this.selection);
    });
    filter.addEventListener("keydown", (event) => this.onFilterKey(event));
    list.addEventListener("keydown", (event) => this.onListKey(event));
    list.addEventListener("focusin", (event) => {
      if (event.target instanceof HTMLInputElement) this.rove(event.target);
    });
    document.addEventListener("keydown", (event) => {
      const typing = event.target instanceof HTMLInputElement && event.target.type !== "checkbox";
      if (event.key === "/" && !typing && !event.ctrlKey && !event.metaKey && !event.altKey) {
        event.preventDefault();
        filter.focus();
        filter.select();
      }
    });
  }

  /** One chip per instrument; `instruments` maps an id to its Instrument. */
  build(listed, instruments) {
    this.list.textContent = "";
    this.listed = listed.slice();
    for (const id of listed) {
      const inst = instruments.get(id);
      const box = document.createElement("input");
      box.type = "checkbox";
      box.value = id;
      box.tabIndex = -1;
      box.addEventListener("change", () => (box.checked ? this.onAdd(id) : this.onRemove(id)));
      const label = document.createElement("label");
      label.className = "chip";
      label.title = `${inst.description} (${inst.kind})`;
      label.append(box, ` ${id}`);
      this.boxes.set(id, box);
      this.text.set(id, `${id} ${inst.description} ${inst.kind}`.toLowerCase());
      this.list.append(label);
    }
  }

  box(id) {
    return this.boxes.get(id) || null;
  }

  /** The unpicked instruments the filter lets through, best first. */
  matches() {
    const query = this.filter.value.trim().toLowerCase();
    const words = query.split(/\s+/).filter(Boolean);
    const picked = new Set(this.selection);
    const rest = this.listed.filter((id) => !picked.has(id));
    if (!words.length) return rest;
    const ranked = [];
    rest.forEach((id, k) => {
      const text = this.text.get(id);
      if (!words.every((w) => text.includes(w))) return;
      const low = id.toLowerCase();
      const rank = low === query ? 0 : low.startsWith(query) ? 1 : low.includes(query) ? 2 : 3;
      ranked.push([rank, k, id]);
    });
    ranked.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
    return ranked.map((r) => r[2]);
  }

  /** Show `selection` (ids in panel order) ticked and first, then what the filter matches. */
  render(selection) {
    this.selection = selection.filter((id) => this.boxes.has(id));
    if (!this.boxes.size) return;
    const picked = this.selection;
    const matches = this.matches();
    const shown = new Set([...picked, ...matches]);
    // Moving the focused checkbox would blur it: note it, and give it focus back.
    const focused = this.list.contains(document.activeElement) ? document.activeElement : null;
    const fragment = document.createDocumentFragment();
    for (const id of [...picked, ...matches]) fragment.append(this.boxes.get(id).parentElement);
    for (const [id, box] of this.boxes) {
      box.checked = picked.includes(id);
      box.parentElement.hidden = !shown.has(id);
      if (!shown.has(id)) fragment.append(box.parentElement);
    }
    this.list.append(fragment);
    const total = this.listed.length;
    this.count.textContent = !this.filter.value.trim()
      ? `${total} listed`
      : matches.length
        ? `${matches.length} of ${total - picked.length} match`
        : "no match";
    const keep = focused && !focused.parentElement.hidden ? focused : null;
    this.rove(keep || this.visible()[0] || null);
    if (focused) (keep || this.roving || this.filter).focus({ preventScroll: !!keep });
  }

  visible() {
    return [...this.list.querySelectorAll("label.chip:not([hidden]) > input")];
  }

  rove(box) {
    if (this.roving && this.roving !== box) this.roving.tabIndex = -1;
    this.roving = box;
    if (box) box.tabIndex = 0;
  }

  onFilterKey(event) {
    const filter = this.filter;
    if (event.key === "Enter") {
      event.preventDefault();
      const first = this.matches()[0];
      if (first && filter.value.trim()) {
        filter.value = "";
        this.onAdd(first);
      }
    } else if (event.key === "Escape" && filter.value) {
      event.preventDefault();
      filter.value = "";
      this.render(this.selection);
    } else if (event.key === "ArrowDown") {
      const boxes = this.visible();
      if (boxes.length) {
        event.preventDefault();
        const next = boxes.find((b) => !b.checked) || boxes[0]; // the first match, past the picked ones
        this.rove(next);
        next.focus();
      }
    }
  }

  onListKey(event) {
    const box = event.target;
    if (!(box instanceof HTMLInputElement)) return;
    const boxes = this.visible();
    const k = boxes.indexOf(box);
    let next = null;
    if (event.key === "ArrowRight" || event.key === "ArrowDown") next = boxes[k + 1];
    else if (event.key === "ArrowLeft" || event.key === "ArrowUp") next = k > 0 ? boxes[k - 1] : this.filter;
    else if (event.key === "Home") next = boxes[0];
    else if (event.key === "End") next = boxes[boxes.length - 1];
    else if (event.key.length === 1 && event.key !== " " && !event.ctrlKey && !event.metaKey && !event.altKey) {
      this.filter.focus(); // the key itself lands in the filter
      return;
    } else return;
    event.preventDefault();
    if (!next) return;
    if (next !== this.filter) this.rove(next);
    next.focus();
  }
}
