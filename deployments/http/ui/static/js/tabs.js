// The WAI-ARIA tabs pattern: one tab stop for the tab list, arrow keys (and Home/End) move between
// tabs and show their panels, the URL fragment (#batch) opens a tab directly.

/** Wire the tabs of `tablist`; `onShow(name)` runs when a tab's panel appears. Returns select(name). */
export function setupTabs(tablist, onShow = () => {}) {
  const tabs = [...tablist.querySelectorAll("[role=tab]")];
  const nameOf = (tab) => tab.id.replace(/^tab-/, "");

  function select(tab, focus = false) {
    for (const other of tabs) {
      const selected = other === tab;
      other.setAttribute("aria-selected", String(selected));
      other.tabIndex = selected ? 0 : -1;
      document.getElementById(other.getAttribute("aria-controls")).hidden = !selected;
    }
    if (focus) tab.focus();
    history.replaceState(null, "", `#${nameOf(tab)}`);
    onShow(nameOf(tab));
  }

  tablist.addEventListener("click", (event) => {
    const tab = event.target.closest("[role=tab]");
    if (tab) select(tab);
  });
  tablist.addEventListener("keydown", (event) => {
    const index = tabs.indexOf(document.activeElement);
    if (index < 0) return;
    const next = { ArrowRight: index + 1, ArrowLeft: index - 1, Home: 0, End: tabs.length - 1 }[event.key];
    if (next === undefined) return;
    event.preventDefault();
    select(tabs[(next + tabs.length) % tabs.length], true);
  });
  const start = tabs.find((tab) => `#${nameOf(tab)}` === location.hash) || tabs[0];
  select(start);
  return (name) => select(tabs.find((tab) => nameOf(tab) === name), true);
}
