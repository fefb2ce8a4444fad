// Stand-in for Deno's ext:deno_net/02_tls.js: user code gets no TLS client keys (Deno.createHttpClient is not offered).
(function () {
function loadTlsKeyPair() {
  throw new TypeError("custom TLS client certificates are not supported in churn");
}
return { loadTlsKeyPair };
})();
