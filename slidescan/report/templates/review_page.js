(() => {
  "use strict";
  const state = JSON.parse(document.getElementById("review-state").textContent);
  const table = document.getElementById("slides");
  const body = table.tBodies[0];
  const heads = Array.from(table.tHead.rows[0].cells);
  const rows = Array.from(body.rows);
  const filter = document.getElementById("filter");
  const show = document.getElementById("show");
  const shown = document.getElementById("shown");
  let sortCol = -1;
  let sortDir = 1;

  function value(row, col) {
    return row.cells[col].dataset.v;
  }
  function compare(a, b, col, numeric) {
    const x = value(a, col), y = value(b, col);
    if (x === "" || y === "") {  // unknowns last, whichever the direction
      return (x === "") - (y === "") || a.dataset.i - b.dataset.i;
    }
    const order = numeric ? Number(x) - Number(y) : x.localeCompare(y);
    return sortDir * order || a.dataset.i - b.dataset.i;
  }
  function sortBy(col, dir) {
    sortCol = col;
    sortDir = dir;
    const numeric = heads[col].dataset.type === "num";
    body.append(...rows.slice().sort((a, b) => compare(a, b, col, numeric)));
    heads.forEach((h, i) => {
      if (h.dataset.type) {
        h.setAttribute("aria-sort", i === col ? (dir > 0 ? "ascending" : "descending") : "none");
      }
    });
  }
  function applyFilter() {
    const words = filter.value.toLowerCase().split(/\s+/).filter(Boolean);
    let count = 0;
    for (const row of rows) {
      const text = row.textContent.toLowerCase();
      const ok = words.every((w) => text.includes(w)) &&
        (show.value === "all" || row.classList.contains(show.value));
      row.hidden = !ok;
      count += ok;
    }
    shown.textContent = count + " of " + rows.length + " shown";
  }
  function remember() {  // in the URL, so the periodic reload keeps the view
    const params = new URLSearchParams();
    if (filter.value) params.set("q", filter.value);
    if (show.value !== "all") params.set("show", show.value);
    if (sortCol >= 0) params.set("sort", heads[sortCol].dataset.key + (sortDir < 0 ? "-" : ""));
    const hash = params.toString();
    if (hash !== location.hash.slice(1)) history.replaceState(null, "", "#" + hash);
  }
  function restore() {
    const params = new URLSearchParams(location.hash.slice(1));
    filter.value = params.get("q") || "";
    if (params.has("show")) show.value = params.get("show");
    const sort = params.get("sort") || "";
    const col = heads.findIndex((h) => h.dataset.type && h.dataset.key === sort.replace(/-$/, ""));
    if (col >= 0) sortBy(col, sort.endsWith("-") ? -1 : 1);
  }

  heads.forEach((h, i) => {
    const button = h.querySelector("button");
    if (!button) return;
    button.addEventListener("click", () => {
      sortBy(i, i === sortCol ? -sortDir : 1);
      remember();
    });
  });
  filter.addEventListener("input", () => { applyFilter(); remember(); });
  show.addEventListener("change", () => { applyFilter(); remember(); });
  restore();
  applyFilter();

  if (!state.finished) {
    const reload = () => {
      // Not while someone is typing a filter: the reload would eat the keystrokes.
      if (document.activeElement === filter) setTimeout(reload, 2000);
      else location.reload();
    };
    setTimeout(reload, state.refresh_seconds * 1000);
  }
})();
