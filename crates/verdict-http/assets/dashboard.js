// Refreshes the dashboard panel in place every `data-refresh` seconds: the
// new panel is fetched, then swapped in whole, so nothing flashes. Served
// as a file of its own (the page's CSP allows no inline script).
(function () {
  "use strict";
  var panel = document.getElementById("panel");
  if (!panel) return;
  var seconds = parseInt(document.body.getAttribute("data-refresh"), 10);
  if (!(seconds > 0)) return;
  function refresh() {
    var url = panel.getAttribute("data-source");
    fetch(url, { credentials: "same-origin", cache: "no-store", redirect: "follow" })
      .then(function (response) {
        if (response.redirected || response.status === 401 || response.status === 403) {
          // Signed out or the cookie expired: the sign-in page says so.
          window.location.assign("/admin/sign-in");
          return null;
        }
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.text();
      })
      .then(function (html) {
        if (html === null) return;
        panel.innerHTML = html;
        panel.classList.remove("stale");
      })
      .catch(function () {
        // Keep what is shown, marked stale, and try again at the next tick.
        panel.classList.add("stale");
      });
  }
  window.setInterval(refresh, seconds * 1000);
})();
