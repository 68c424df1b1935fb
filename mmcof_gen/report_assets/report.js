// The report page: summary, filters and one page of trajectory cards at a time. data.js holds the summary,
// index.js a row of the filtered fields per trajectory, cards-NNNNN.js the full cards, chunk_size per file,
// loaded (as scripts: a file:// page cannot fetch) only when the page shown holds one of their cards.
(function () {
  "use strict";
  const data = window.MMCOF_REPORT;
  const files = window.MMCOF_FILES;
  const FIELDS = ["id", "status", "kind", "resolution", "question_type", "image", "question"];  // index.js rows
  const index = window.MMCOF_INDEX.map((row) => Object.fromEntries(FIELDS.map((k, i) => [k, row[i]])));
  const $ = (selector) => document.querySelector(selector);
  const esc = (value) => String(value ?? "").replace(/[&<>"']/g,
    (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
  const src = (name) => files + encodeURIComponent(name);
  let shown = index.map((_, i) => i);  // positions of the trajectories that pass the filters
  let page = 0;
  let request = 0;  // the latest showPage call; an older one that finishes later draws nothing
  let ready = false;  // the cards of the page shown are drawn

  const chunks = new Map();  // chunk number -> Promise of its cards
  const arrived = new Map();  // chunk number -> resolve of that Promise, until its script runs
  window.mmcofChunk = (n, cards) => arrived.get(n)(cards);
  function chunk(n) {
    if (!chunks.has(n)) {
      chunks.set(n, new Promise((resolve, reject) => {
        arrived.set(n, resolve);
        const script = document.createElement("script");
        script.src = src(`cards-${String(n).padStart(5, "0")}.js`);
        script.onerror = () => reject(new Error(`cannot load ${script.src}`));
        document.head.appendChild(script);
      }));
    }
    return chunks.get(n);
  }

  function summary() {
    const s = data.stats;
    $("#run-info").textContent = `${data.run_dir} · created ${data.created ?? "?"} · config ${data.config_hash ?? "?"} · ` +
      `${s.images} images, ${s.tasks} tasks, ${index.length} trajectories`;
    const keys = ["accepted", "direct", "zoom", "rejected", "errors"];
    const rows = Object.entries(s.per_resolution).map(([r, row]) => [r, ...keys.map((k) => row[k])]);
    rows.push(["all", ...keys.map((k) => s[k])]);
    $("#counts").innerHTML = `<tr><th>R</th>${keys.map((k) => `<th>${k}</th>`).join("")}</tr>` +
      rows.map((row) => `<tr>${row.map((v) => `<td>${esc(v)}</td>`).join("")}</tr>`).join("");
    const reasons = Object.entries(s.rejection_reasons);
    $("#reasons").textContent = "Funnel: " + data.funnel.map(([k, v]) => `${k} ${v}`).join(" → ") +
      (reasons.length ? ". Rejections: " + reasons.map(([k, v]) => `${k} (${v})`).join(", ") : "");
    $("#plots").innerHTML = data.plots === null
      ? "<p class=\"warning\">Plots need matplotlib: pip install 'mmcof-gen[data]' and run view again.</p>"
      : data.plots.map((p) => `<figure><img src="${src(p.src)}" alt="${esc(p.title)}"></figure>`).join("");
    $("#errors summary").textContent = `Errors (${data.error_count}` +
      (data.error_count > data.errors.length ? `, first ${data.errors.length} listed)` : ")");
    $("#errors table").innerHTML = "<tr><th class=text>id</th><th class=text>stage</th><th class=text>image</th><th>R</th><th class=text>reason</th></tr>" +
      data.errors.map((e) => `<tr><td class=text>${esc(e.id)}</td><td class=text>${esc(e.stage)}</td>` +
        `<td class=text>${esc(e.image)}</td><td>${esc(e.resolution)}</td><td class=text>${esc(e.reason)}</td></tr>`).join("");
    $("#system-prompt").textContent = data.system_prompt;
  }

  function fillSelect(id, values) {
    $(id).innerHTML = `<option value="">all</option>` +
      values.map((v) => `<option value="${esc(v)}">${esc(v)}</option>`).join("");
    $(id).addEventListener("change", applyFilters);
  }

  function distinct(key) {
    return [...new Set(index.map((t) => t[key]))].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  }

  function applyFilters() {
    const want = {
      status: $("#filter-status").value, kind: $("#filter-kind").value,
      resolution: $("#filter-resolution").value, question_type: $("#filter-question-type").value,
    };
    const text = $("#filter-text").value.trim().toLowerCase();
    shown = index.map((_, i) => i).filter((i) => {
      const t = index[i];
      return Object.entries(want).every(([k, v]) => v === "" || String(t[k]) === v) &&
        (text === "" || `${t.id} ${t.question} ${t.image}`.toLowerCase().includes(text));
    });
    return showPage(0);
  }

  function pageCount() {
    return Math.max(1, Math.ceil(shown.length / data.page_size));
  }

  // Draws page n once the chunks holding its cards are loaded; the Promise resolves when it is drawn.
  function showPage(n) {
    page = Math.min(Math.max(0, n), pageCount() - 1);
    const slice = shown.slice(page * data.page_size, (page + 1) * data.page_size);
    const mine = ++request;
    ready = false;
    const needed = [...new Set(slice.map((i) => Math.floor(i / data.chunk_size)))];
    const drawn = Promise.all(needed.map(chunk)).then((loaded) => {
      if (mine !== request) return;
      const cards = new Map(needed.map((n, k) => [n, loaded[k]]));
      $("#cards").innerHTML = slice.map((i) => card(cards.get(Math.floor(i / data.chunk_size))[i % data.chunk_size]))
        .join("") || "<p>No trajectory matches the filters.</p>";
      ready = true;
    }, (error) => {
      $("#cards").innerHTML = `<p class="missing">${esc(error.message)}</p>`;
      throw error;
    });
    document.querySelectorAll(".page-info").forEach((el) => {
      el.textContent = `page ${page + 1} of ${pageCount()} (${shown.length} trajectories)`;
    });
    document.querySelectorAll(".pager button").forEach((b) => {
      const target = page + Number(b.dataset.step);
      b.disabled = target < 0 || target >= pageCount();
    });
    return drawn;
  }

  // Each distinct box once: chain boxes (C1, C2, ...) highlighted, with the numbers of the steps that used it.
  function boxes(t) {
    const [w, h] = t.size;
    const size = Math.max(w, h) / 24;
    const byBox = new Map();
    const entry = (b) => byBox.get(b.join()) || byBox.set(b.join(), { box: b, steps: [], chain: null }).get(b.join());
    t.steps.forEach((s, i) => { if (s.box) entry(s.box).steps.push(i + 1); });
    t.chain.forEach((c, i) => { entry(c.box).chain = `C${i + 1}`; });
    return `<svg viewBox="0 0 ${w} ${h}" preserveAspectRatio="none">` + [...byBox.values()]
      .sort((a, b) => (a.chain ? 1 : 0) - (b.chain ? 1 : 0))  // chain boxes drawn last, on top
      .map(({ box: b, steps, chain }) => {
        const label = [chain, steps.join(",")].filter(Boolean).join(" · ");
        return `<g class="box ${chain ? "chain" : "step"}" data-steps="${steps.join(",")}"><rect x="${b[0]}" y="${b[1]}" ` +
          `width="${b[2] - b[0]}" height="${b[3] - b[1]}"></rect><text x="${b[0] + 2}" y="${b[1] + size}" ` +
          `font-size="${size}">${label}</text></g>`;
      }).join("") + "</svg>";
  }

  function frame(t) {
    if (t.frame.missing) return `<div class="missing">Frame unavailable: ${esc(t.frame.missing)}</div>`;
    const warning = t.frame.warning ? `<div class="warning">${esc(t.frame.warning)}</div>` : "";
    const [w, h] = t.size;
    const width = Math.round(640 * w / Math.max(w, h));  // the longest side shows at most 640 px
    return `${warning}<div class="frame" style="aspect-ratio: ${w} / ${h}; max-width: ${width}px">` +
      `<img loading="lazy" src="${src(t.frame.src)}" alt="working frame ${w}x${h}">${boxes(t)}</div>`;
  }

  // The chain's crops (C1, C2, ...), then the search's zooms that were not kept.
  function crops(t) {
    const figure = (z, name, caption) => `<figure class="${name}">` +
      (z.crop ? `<img loading="lazy" src="${src(z.crop)}" alt="${caption}">` : "") +
      (z.crop_error ? `<div class="missing">no crop: ${esc(z.crop_error)}</div>` : "") +
      `<figcaption>${caption}: zoom [${z.box.join(", ")}]${z.label ? " " + esc(z.label) : ""}</figcaption></figure>`;
    return `<div class="crops">${t.chain.map((c, i) => figure(c, "chain-crop", `C${i + 1}`)).join("")}` +
      t.other_zooms.map((z) => figure(z, "other-crop", `step ${z.step}, not kept`)).join("") + "</div>";
  }

  function verdict(t) {
    const v = t.verdict;
    const result = v ? `${v.correct ? "correct" : "incorrect"}: ${esc(v.reason)}` : "no verdict";
    return `<div class="verdict">answer <b>${esc(t.answer ?? "none")}</b> · expected <b>${esc(t.expected ?? "none")}</b> · ` +
      `verdict ${result}${t.reason ? ` · <b>${esc(t.reason)}</b>` : ""}</div>`;
  }

  function steps(t) {
    const rows = t.steps.map((s, i) => `<tr><td>${i + 1}</td><td class=text>${esc(s.action)}</td>` +
      `<td class=text>${s.box ? "[" + s.box.join(", ") + "]" : ""}</td><td class=text>${esc(s.thought)}</td>` +
      `<td class=text>${esc(JSON.stringify(s.arguments))}</td><td class=text>${esc(s.observation)}</td></tr>`).join("");
    return `<details><summary>Raw steps (${t.steps.length})</summary><table class="steps"><tr><th>#</th>` +
      `<th class=text>action</th><th class=text>box</th><th class=text>thought</th><th class=text>arguments</th>` +
      `<th class=text>observation</th></tr>${rows}</table></details>`;
  }

  function chainText(t) {
    if (t.messages) {
      const turns = t.messages.map((m) => `<b>${esc(m.role)}</b>\n${esc(m.content)}`).join("\n\n");
      return `<details open><summary>Chain as trained (${t.messages.length} messages after the system prompt)</summary><pre>${turns}</pre></details>`;
    }
    const thoughts = t.chain.map((c, i) => `C${i + 1}: ${esc(c.thought)}`).concat(t.final_thought ? [esc(t.final_thought)] : []);
    return thoughts.length ? `<details><summary>Chain thoughts</summary><pre>${thoughts.join("\n")}</pre></details>` : "";
  }

  function card(t) {
    const options = t.options ? " " + t.options.map((o, i) => `(${String.fromCharCode(65 + i)}) ${esc(o)}`).join(" ") : "";
    return `<article class="card ${esc(t.status)}" id="t-${esc(t.id)}"><header><code>${esc(t.id)}</code> ` +
      `<span class="badge ${esc(t.status)}">${esc(t.status)}</span> R=${t.resolution} · ${esc(t.kind)} · ` +
      `${esc(t.question_type)} · ${esc(t.image)} · frame ${t.size[0]}x${t.size[1]}</header>` +
      `<p class="question">${esc(t.question)}${options}</p>${verdict(t)}` +
      `<div class="figure">${frame(t)}${crops(t)}</div>${chainText(t)}${steps(t)}</article>`;
  }

  summary();
  fillSelect("#filter-status", distinct("status"));
  fillSelect("#filter-kind", distinct("kind"));
  fillSelect("#filter-resolution", distinct("resolution"));
  fillSelect("#filter-question-type", distinct("question_type"));
  $("#filter-text").addEventListener("input", applyFilters);
  document.querySelectorAll(".pager button").forEach((b) => {
    b.addEventListener("click", () => { showPage(page + Number(b.dataset.step)); $("#filters").scrollIntoView(); });
  });
  showPage(0);
  window.mmcofReport = { showPage, applyFilters, page: () => page, pageCount, shown: () => shown.length,
                         ready: () => ready };
})();
