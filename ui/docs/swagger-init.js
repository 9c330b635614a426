// Swagger UI for /openapi.json. Everything it loads is served by the
// coordinator itself: no CDN, and no schema validator call-out.
window.ui = SwaggerUIBundle({
  url: "openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  validatorUrl: null,
  // Send the browser session cookie with "Try it out" requests.
  withCredentials: true,
  presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout",
});
