// StreamVAD console: plain JavaScript, no build step. Pages are templates in index.html, routed by the URL's
// fragment (#/cameras, #/events, #/events/<id>, #/cameras/<id>). Every API call sends the session as a bearer
// header (changes need it); the server also sets it as a SameSite=Strict cookie, which <img> and <video> use.
"use strict";

const state = { session: sessionStorage.getItem("streamvad.session"), timers: [], selected: 0, offset: 0 };
const PAGE = 25;
const $ = (sel, root = document) => root.querySelector(sel);

async function api(path, options = {}) {
  const headers = { "Content-Type": "application/json" };
  if (state.session) headers.Authorization = `Bearer ${state.session}`;
  const resp = await fetch(`/api${path}`, { ...options, headers });
  if (resp.status === 401) { logout(); throw new Error("logged out"); }
  const body = resp.headers.get("content-type")?.includes("json") ? await resp.json() : null;
  if (!resp.ok) throw new Error(body?.detail ?? `${resp.status} ${resp.statusText}`);
  return body;
}

let toastTimer;
function toast(text, bad = false) {
  const el = $("#toast");
  el.textContent = text;
  el.className = bad ? "bad shown" : "shown";
  clearTimeout(toastTimer);  // a toast shown for 4 s from when it appeared, not from the one before it
  toastTimer = setTimeout(() => { el.className = ""; }, 4000);
}

function show(template) {
  state.timers.forEach(clearInterval);
  state.timers = [];
  document.onkeydown = null;
  const main = $("#main");
  main.replaceChildren($(`#${template}`).content.cloneNode(true));
  $("#nav").hidden = template === "login-page";
  return main;
}

const when = (t) => (t ? new Date(t * 1000).toLocaleString() : "—");
const fresh = (url) => `${url}${url.includes("?") ? "&" : "?"}t=${Date.now()}`;

function badge(text, kind) {
  const el = document.createElement("span");
  el.className = `badge ${kind}`;
  el.textContent = text;
  return el;
}

// ----------------------------------------------------------------- login

function loginPage() {
  const main = show("login-page");
  $("#login-form", main).onsubmit = async (ev) => {
    ev.preventDefault();
    const form = new FormData(ev.target);
    const body = Object.fromEntries([...form].filter(([, v]) => v));
    try {
      await login(body);
    } catch (err) {
      $("#login-error").textContent = err.message;
    }
  };
}

async function login(body) {
  const resp = await fetch("/api/login", { method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body) });
  const data = await resp.json();
  if (!resp.ok) throw new Error(data.detail ?? "login failed");
  state.session = data.session;
  sessionStorage.setItem("streamvad.session", data.session);
  location.hash = "#/cameras";
}

function logout() {
  if (state.session) fetch("/api/logout", { method: "POST", headers: { Authorization: `Bearer ${state.session}` } });
  state.session = null;
  sessionStorage.removeItem("streamvad.session");
  location.hash = "#/login";
}

// ----------------------------------------------------------------- cameras grid

async function camerasPage() {
  const main = show("cameras-page");
  const grid = $("#tiles", main);
  const cameras = await api("/cameras");
  for (const cam of cameras) {
    const tile = document.createElement("a");
    tile.className = "tile";
    tile.href = `#/cameras/${encodeURIComponent(cam.id)}`;
    tile.dataset.camera = cam.id;
    tile.innerHTML = `<img alt=""><div class="caption"><b></b><span class="badges"></span></div>`;
    $("b", tile).textContent = cam.id;
    $("img", tile).alt = `${cam.id} live`;
    grid.append(tile);
  }
  const refresh = async () => {
    const now = await api("/cameras");
    for (const cam of now) {
      const tile = grid.querySelector(`[data-camera="${CSS.escape(cam.id)}"]`);
      if (!tile) continue;
      $("img", tile).src = fresh(cam.latest_url);
      $(".badges", tile).replaceChildren(
        badge(cam.online ? "online" : "offline", cam.online ? "ok" : "bad"),
        badge(cam.state === "learning" ? "learning" : cam.state === "scoring" ? "armed" : cam.state,
          cam.state === "scoring" ? "ok" : "warn"),
        ...(cam.model_version ? [badge(cam.model_version, "plain")] : []),
        ...(cam.enrolment && cam.enrolment.phase !== "done" ? [badge(`enrolling: ${cam.enrolment.phase}`, "warn")] : []),
        ...(cam.drift != null && cam.drift > 0.5 ? [badge("re-enrol?", "warn")] : []));
    }
  };
  await refresh();
  state.timers.push(setInterval(() => refresh().catch(() => {}), 1000));
}

// ----------------------------------------------------------------- events review

async function eventsPage() {
  const main = show("events-page");
  const filters = $("#filters", main);
  const cameras = await api("/cameras");
  for (const cam of cameras) filters.camera.add(new Option(cam.id, cam.id));
  const saved = JSON.parse(sessionStorage.getItem("streamvad.filters") ?? "{}");
  for (const [k, v] of Object.entries(saved)) if (filters[k]) filters[k].value = v;
  filters.onchange = () => { state.offset = 0; loadEvents(); };
  $("#prev", main).onclick = () => { state.offset = Math.max(0, state.offset - PAGE); loadEvents(); };
  $("#next", main).onclick = () => { state.offset += PAGE; loadEvents(); };
  document.onkeydown = eventKeys;
  await loadEvents();
  await drawTimeline(cameras.map((c) => c.id));
}

function eventQuery(extra = {}) {
  const form = $("#filters");
  const values = Object.fromEntries([...new FormData(form)].filter(([, v]) => v));
  sessionStorage.setItem("streamvad.filters", JSON.stringify(values));
  return new URLSearchParams({ ...values, ...extra }).toString();
}

async function loadEvents() {
  const page = await api(`/events?${eventQuery({ limit: PAGE, offset: state.offset })}`);
  const list = $("#event-list");
  list.replaceChildren(...page.events.map((ev) => {
    const li = document.createElement("li");
    li.dataset.id = ev.id;
    li.innerHTML = `<a><img alt=""><div><b></b><span class="when"></span><span class="badges"></span></div></a>`;
    $("a", li).href = `#/events/${ev.id}`;
    if (ev.heatmap_url) $("img", li).src = ev.heatmap_url;
    $("b", li).textContent = `${ev.camera} · ${ev.type}`;
    $(".when", li).textContent = `${when(ev.start_wall_time)} · peak ${ev.peak_score.toFixed(2)}`;
    $(".badges", li).append(badge(ev.review, ev.review === "unreviewed" ? "warn" : "ok"),
      badge(ev.state, ev.state === "open" ? "bad" : "plain"));
    return li;
  }));
  state.selected = Math.min(state.selected, Math.max(0, page.events.length - 1));
  select(state.selected);
  $("#page").textContent = page.total ? `${page.offset + 1}–${page.offset + page.events.length} of ${page.total}` : "none";
  $("#prev").disabled = page.offset === 0;
  $("#next").disabled = page.offset + page.events.length >= page.total;
}

async function drawTimeline(cameras) {
  // one row per camera, a mark per event, over the last day, or less when every event is recent (an hour at least)
  const until = Date.now() / 1000, width = 960, row = 22;
  const page = await api(`/events?${new URLSearchParams({ since: until - 86400, limit: 500 })}`);
  const oldest = Math.min(until, ...page.events.map((e) => e.start_wall_time));
  const span = Math.min(86400, Math.max(3600, (until - oldest) * 1.1));
  const since = until - span;
  const label = span >= 7200 ? `${Math.round(span / 3600)} h ago` : `${Math.round(span / 60)} min ago`;
  const svg = [`<svg viewBox="0 0 ${width + 120} ${row * cameras.length + 20}" role="img" aria-label="timeline">`];
  cameras.forEach((cam, i) => {
    const y = i * row + 4;
    svg.push(`<text x="0" y="${y + 13}">${cam.replace(/[<&>]/g, "")}</text>`,
      `<rect class="lane" x="120" y="${y}" width="${width}" height="${row - 6}"/>`);
    for (const ev of page.events.filter((e) => e.camera === cam)) {
      const x = 120 + ((ev.start_wall_time - since) / span) * width;
      const w = Math.max(3, (((ev.end_wall_time ?? until) - ev.start_wall_time) / span) * width);
      svg.push(`<a href="#/events/${ev.id}"><rect class="mark ${ev.review}" x="${x}" y="${y}" width="${w}"
        height="${row - 6}"><title>${when(ev.start_wall_time)}</title></rect></a>`);
    }
  });
  svg.push(`<text x="120" y="${row * cameras.length + 16}">${label}</text>`,
    `<text x="${width + 80}" y="${row * cameras.length + 16}">now</text></svg>`);
  $("#timeline").innerHTML = svg.join("");
}

function select(i) {
  const items = [...document.querySelectorAll("#event-list li")];
  items.forEach((li, j) => li.classList.toggle("selected", j === i));
  state.selected = i;
  items[i]?.scrollIntoView({ block: "nearest" });
}

async function eventKeys(ev) {
  if (ev.target.tagName === "SELECT" || ev.target.tagName === "INPUT") return;
  const items = [...document.querySelectorAll("#event-list li")];
  const id = items[state.selected]?.dataset.id;
  if (ev.key === "j") select(Math.min(items.length - 1, state.selected + 1));
  else if (ev.key === "k") select(Math.max(0, state.selected - 1));
  else if (ev.key === "Enter" && id) location.hash = `#/events/${id}`;
  else if (ev.key === "r" && id) await act(`/events/${id}/review`, { state: "reviewed" }).then(loadEvents);
  else if (ev.key === "n" && id) await act(`/events/${id}/normal`).then(loadEvents);
}

async function act(path, body) {
  try {
    const out = await api(path, { method: "POST", body: body ? JSON.stringify(body) : undefined });
    toast(out.message);
    return out;
  } catch (err) {
    toast(err.message, true);
    throw err;
  }
}

// ----------------------------------------------------------------- one event

async function eventPage(id) {
  const main = show("event-page");
  const render = async () => {
    const ev = await api(`/events/${id}`);
    $("#event-title", main).textContent = `${ev.camera}: ${ev.type} at ${when(ev.start_wall_time)}`;
    $("#event-facts", main).textContent = `${ev.state}, ${ev.frame_count} anomalous frames, peak ${ev.peak_score.toFixed(2)}, ` +
      `model ${ev.model_version ?? "—"}, ${ev.review}` + (ev.marked_version ? ` (${ev.marked_version} knows it)` : "");
    for (const name of ["snapshot", "heatmap"]) if (ev[`${name}_url`]) $(`#${name}`, main).src = fresh(ev[`${name}_url`]);
    if (ev.exemplar) {
      $("#exemplar", main).src = fresh(ev.exemplar.url);
      const source = ev.exemplar.source.split("/").pop();  // the training frame's file, without where it was read
      const pruned = ev.model_version && ev.exemplar.version && ev.exemplar.version !== ev.model_version
        ? ` (${ev.model_version}, which scored it, was pruned)` : "";
      $("#exemplar-caption", main).textContent = `Nearest normal exemplar: ${source}, from ${ev.exemplar.version ?? "the model"}${pruned}`;
    } else {
      $("#exemplar-caption", main).textContent = "No exemplar kept for this model";
    }
    $("#clip-figure", main).hidden = !ev.clip_url;  // clips off, or the event still open
    if (ev.clip_url && !$("#clip", main).src) {
      if (ev.snapshot_url) $("#clip", main).poster = ev.snapshot_url;  // the peak frame until it plays
      $("#clip", main).src = ev.clip_url;
      $("#clip-caption", main).textContent = "Clip, from before it opened to after it closed";
    }
    $("#normal", main).disabled = !ev.can_mark_normal || ev.review === "normal";
    $("#undo", main).disabled = !ev.marked_version;
    $("#reviewed", main).disabled = ev.review !== "unreviewed";
  };
  $("#reviewed", main).onclick = () => act(`/events/${id}/review`, { state: "reviewed" }).then(render);
  $("#normal", main).onclick = async () => {
    $("#normal", main).disabled = true;  // the new model version takes seconds: one click, one version
    toast("Teaching the camera's model this sight…");
    await act(`/events/${id}/normal`).catch(() => {});  // act has shown the operator why
    await render();
  };
  $("#undo", main).onclick = () => act(`/events/${id}/undo`).then(render);
  await render();
}

// ----------------------------------------------------------------- one camera

function thresholdRows(tbody, entries) {
  tbody.replaceChildren(...entries.map(([k, v]) => {
    const tr = document.createElement("tr");
    tr.innerHTML = "<th></th><td></td>";
    tr.cells[0].textContent = k;
    tr.cells[1].textContent = v.toFixed(3);
    return tr;
  }));
}

async function cameraPage(id) {
  const main = show("camera-page");
  const render = async () => {
    const cam = await api(`/cameras/${encodeURIComponent(id)}`);
    $("#camera-title", main).textContent = `${cam.id} (${cam.state}${cam.model_version ? `, ${cam.model_version}` : ""})`;
    $("#versions tbody", main).replaceChildren(...cam.versions.slice().reverse().map((v) => {
      const tr = document.createElement("tr");
      tr.innerHTML = "<td></td><td></td><td></td><td></td>";
      tr.cells[0].textContent = v.name + (v.current ? " (current)" : "");
      tr.cells[1].textContent = when(v.created_at);
      tr.cells[2].textContent = v.event
        ? `marked normal: ${v.event.slice(0, 8)}${v.carried_from ? ` (again, as ${v.carried_from} did)` : ""}`
        : (v.source ?? "");
      if (!v.current) {
        const b = document.createElement("button");
        b.textContent = "Activate";
        b.onclick = () => act(`/cameras/${encodeURIComponent(id)}/activate`, { version: v.name }).then(render);
        tr.cells[3].append(b);
      }
      return tr;
    }));
    $("#rollback", main).disabled = !cam.versions.length || cam.versions[0].current;  // oldest first
    const fusion = cam.scorer && cam.scorer.includes("+motion") ? cam.scorer.split(":").pop() : null;
    $("#scorer", main).textContent = !cam.scorer ? "No model yet."
      : !fusion ? `${cam.scorer}: a frame above its threshold is anomalous.`
        : `${cam.scorer}: appearance and motion, each on a scale where normal footage's median is 0 and the ` +
          `part's threshold 1, ` + (fusion === "sum" ? "summed; a frame is anomalous when the sum passes its own threshold."
            : "and a frame is anomalous when either passes 1.");
    thresholdRows($("#scorer-thresholds tbody", main), Object.entries(cam.scorer_thresholds));
    thresholdRows($("#thresholds tbody", main), Object.entries(cam.thresholds).filter(([k]) => !(k in cam.scorer_thresholds)));
    $("#enrolment", main).textContent = cam.enrolment ? `enrolment: ${JSON.stringify(cam.enrolment)}` : "";
  };
  $("#rollback", main).onclick = () => act(`/cameras/${encodeURIComponent(id)}/rollback`).then(render);
  $("#enrol-form", main).onsubmit = (ev) => {
    ev.preventDefault();
    act(`/cameras/${encodeURIComponent(id)}/enroll`, { duration_s: 60 * Number(ev.target.minutes.value) }).then(render);
  };
  const live = () => { $("#camera-live", main).src = fresh(`/api/cameras/${encodeURIComponent(id)}/latest.jpg`); };
  live();
  state.timers.push(setInterval(live, 1000), setInterval(() => render().catch(() => {}), 5000));
  await render();
}

// ----------------------------------------------------------------- routing

async function route() {
  const hash = location.hash || "#/cameras";
  const token = new URLSearchParams(hash.slice(1)).get("token");
  if (token) return login({ token }).catch((err) => { loginPage(); $("#login-error").textContent = err.message; });
  if (!state.session || hash === "#/login") return loginPage();
  const [, page, id] = hash.split("/");
  document.querySelectorAll("#nav a[data-page]").forEach((a) => a.classList.toggle("active", a.dataset.page === page));
  try {
    if (page === "events" && id) await eventPage(decodeURIComponent(id));
    else if (page === "events") await eventsPage();
    else if (page === "cameras" && id) await cameraPage(decodeURIComponent(id));
    else await camerasPage();
  } catch (err) {
    if (err.message !== "logged out") toast(err.message, true);
  }
}

$("#logout").onclick = logout;
window.addEventListener("hashchange", route);
route();
