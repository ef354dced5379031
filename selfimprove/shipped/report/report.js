// The records table of the selfimprove report: the records are JSON in the page; this shows one page of
// prompts at a time (never one row per record in the DOM, so 10^5 samples stay fast), with a filter box,
// an iteration selector and page buttons. Text goes in as textContent only: a record is never read as HTML.
(function () {
  "use strict";
  var PAGE = 20;
  var data = JSON.parse(document.getElementById("records-data").textContent);
  var prompts = data.prompts;
  var select = document.getElementById("records-iteration");
  var box = document.getElementById("records-filter");
  var body = document.getElementById("records-body");
  var count = document.getElementById("records-count");
  var pageLabel = document.getElementById("records-page");
  var prev = document.getElementById("records-prev");
  var next = document.getElementById("records-next");
  var state = {iteration: data.iterations.length ? String(data.iterations[0]) : "all", filter: "", page: 0};
  var texts = new Array(prompts.length); // each prompt's searchable text, made on the first search

  // The prompts of each iteration, and all of them by id then iteration (a prompt's iterations together).
  var byIteration = {all: prompts.map(function (_, i) { return i; })};
  prompts.forEach(function (p, i) { (byIteration[p.it] = byIteration[p.it] || []).push(i); });
  byIteration.all.sort(function (a, b) {
    var x = prompts[a], y = prompts[b];
    if (x.id !== y.id) { return String(x.id).localeCompare(String(y.id), undefined, {numeric: true}); }
    return x.it - y.it;
  });

  function option(value, label) {
    var element = document.createElement("option");
    element.value = value;
    element.textContent = label;
    select.appendChild(element);
  }
  data.iterations.forEach(function (k) { option(String(k), "iteration " + k); });
  option("all", "all iterations");
  select.value = state.iteration;

  function text(i) {
    if (texts[i] === undefined) {
      var p = prompts[i];
      var parts = [String(p.id), p.q || "", p.gold == null ? "" : String(p.gold), JSON.stringify(p.fields)];
      p.samples.forEach(function (s) { parts.push(JSON.stringify(s)); });
      p.pairs.forEach(function (s) { parts.push(JSON.stringify(s)); });
      texts[i] = parts.join("\n").toLowerCase();
    }
    return texts[i];
  }

  function selected() {
    var wanted = state.filter.trim().toLowerCase();
    var id = /^id:\s*(.+)$/.exec(wanted);
    var candidates = byIteration[state.iteration] || [];
    if (!wanted) { return candidates; }
    return candidates.filter(function (i) {
      return id ? String(prompts[i].id).toLowerCase() === id[1].trim() : text(i).indexOf(wanted) !== -1;
    });
  }

  function element(tag, content, className) {
    var node = document.createElement(tag);
    if (content !== undefined && content !== null) { node.textContent = String(content); }
    if (className) { node.className = className; }
    return node;
  }

  function show(value) {
    if (value === null || value === undefined) { return ""; }
    if (typeof value === "string") { return value; }
    if (typeof value === "object" && !Array.isArray(value)) { // vote counts and the like: {1109: 5, 1179: 1}
      return "{" + Object.keys(value).map(function (key) { return key + ": " + show(value[key]); }).join(", ") + "}";
    }
    return JSON.stringify(value);
  }

  function chips(fields, skip) {
    var cell = element("td");
    Object.keys(fields).forEach(function (key) {
      if (skip.indexOf(key) === -1) { cell.appendChild(element("span", key + ": " + show(fields[key]), "kv")); }
    });
    return cell;
  }

  function samplesTable(p) {
    var table = element("table", null, "inner");
    p.samples.forEach(function (s, n) {
      var row = element("tr");
      row.appendChild(element("th", n));
      row.appendChild(element("td", s.completion));
      row.appendChild(chips(s, ["completion"]));
      table.appendChild(row);
    });
    return table;
  }

  function samplesCell(p, row) {
    var cell = element("td");
    if (!p.samples.length) { return cell; }
    var button = element("button", "\u25b8 " + p.samples.length + " samples", "samples");
    button.type = "button";
    var open = null;
    // The samples go in a full-width row under the prompt, built when opened: a closed prompt costs one
    // element, whatever its number of samples.
    button.addEventListener("click", function () {
      if (open) {
        open.remove();
        open = null;
        button.textContent = "\u25b8 " + p.samples.length + " samples";
        return;
      }
      open = element("tr", null, "samples-row");
      var wide = element("td");
      wide.colSpan = 7;
      wide.appendChild(samplesTable(p));
      open.appendChild(wide);
      row.after(open);
      button.textContent = "\u25be " + p.samples.length + " samples";
    });
    cell.appendChild(button);
    return cell;
  }

  function pairsCell(p) {
    var cell = element("td");
    p.pairs.forEach(function (pair) {
      var table = element("table", null, "inner pair");
      ["chosen", "rejected"].forEach(function (side) {
        if (pair[side] === undefined) { return; }
        var row = element("tr", null, side);
        row.appendChild(element("th", side));
        row.appendChild(element("td", show(pair[side])));
        table.appendChild(row);
      });
      var rest = element("tr");
      rest.appendChild(element("th", ""));
      rest.appendChild(chips(pair, ["chosen", "rejected"]));
      table.appendChild(rest);
      cell.appendChild(table);
    });
    return cell;
  }

  function follow(id) {
    state.iteration = "all";
    select.value = "all";
    box.value = "id:" + id;
    state.filter = box.value;
    state.page = 0;
    render();
  }

  function rowOf(i) {
    var p = prompts[i];
    var row = element("tr");
    row.dataset.index = i;
    row.appendChild(element("td", p.it));
    var idCell = element("td");
    var link = element("button", p.id, "id");
    link.type = "button";
    link.title = "this prompt in every iteration";
    link.addEventListener("click", function () { follow(p.id); });
    idCell.appendChild(link);
    row.appendChild(idCell);
    row.appendChild(element("td", p.q));
    row.appendChild(element("td", show(p.gold)));
    row.appendChild(chips(p.fields, []));
    row.appendChild(samplesCell(p, row));
    row.appendChild(pairsCell(p));
    return row;
  }

  function render() {
    var rows = selected();
    var samples = 0, pairs = 0;
    rows.forEach(function (i) { samples += prompts[i].samples.length; pairs += prompts[i].pairs.length; });
    var pages = Math.max(1, Math.ceil(rows.length / PAGE));
    state.page = Math.min(state.page, pages - 1);
    count.dataset.prompts = rows.length;
    count.dataset.samples = samples;
    count.dataset.pairs = pairs;
    count.textContent = rows.length + " prompts, " + samples + " samples, " + pairs + " pairs" +
      (state.iteration === "all" ? " in all iterations" : " in iteration " + state.iteration) +
      (state.filter.trim() ? " matching \u201c" + state.filter.trim() + "\u201d" : "");
    var fragment = document.createDocumentFragment();
    rows.slice(state.page * PAGE, (state.page + 1) * PAGE).forEach(function (i) { fragment.appendChild(rowOf(i)); });
    body.replaceChildren(fragment);
    pageLabel.textContent = "page " + (state.page + 1) + " of " + pages;
    prev.disabled = state.page === 0;
    next.disabled = state.page >= pages - 1;
  }

  var pending = null;
  box.addEventListener("input", function () {
    clearTimeout(pending);
    pending = setTimeout(function () { state.filter = box.value; state.page = 0; render(); }, 120);
  });
  select.addEventListener("change", function () { state.iteration = select.value; state.page = 0; render(); });
  prev.addEventListener("click", function () { state.page -= 1; render(); });
  next.addEventListener("click", function () { state.page += 1; render(); });
  render();
  document.body.dataset.ready = "true"; // the table is drawn (the browser tests wait for this)
})();
