// Starts Swagger UI on /docs from a file, so the page's CSP needs no inline script. "Try it out"
// sends the page's CSRF token, so a logged-in browser can post too.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.dataset.openapiUrl,
    dom_id: "#swagger-ui",
    layout: "BaseLayout",
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
    requestInterceptor: (request) => {
      if (!["GET", "HEAD"].includes((request.method || "GET").toUpperCase())) {
        request.headers["X-CSRF-Token"] = root.dataset.csrfToken;
      }
      return request;
    },
  });
});
