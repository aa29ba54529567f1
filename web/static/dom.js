// The two DOM helpers every part of the dashboard builds with: make an element in
// one call, and write a text node only when its text changes, so a figure that
// stays the same costs no DOM write at all.

/** A `tag` element with `className` (none when empty) holding `children` (nodes or strings). */
export function el(tag, className, ...children) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  node.append(...children);
  return node;
}

/** Set the data of text node `text` to `value`, unless it holds it already. */
export function setText(text, value) {
  if (text.data !== value) text.data = value;
}
