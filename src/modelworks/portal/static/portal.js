// Modelworks portal: small progressive enhancements; every page works without them.
"use strict";

document.addEventListener("click", (event) => {
  const button = event.target.closest("button.copy[data-copy]");
  if (!button) return;
  const source = document.querySelector(button.dataset.copy);
  if (!source || !navigator.clipboard) return;
  navigator.clipboard.writeText(source.textContent).then(() => {
    const label = button.textContent;
    button.textContent = "Copied";
    setTimeout(() => { button.textContent = label; }, 1500);
  });
});

// A TPM field shows the RPM derived from it (6 per 1,000), as the server derives it.
document.addEventListener("input", (event) => {
  const field = event.target;
  if (!field.id) return;
  const hint = document.querySelector(`[data-rpm-for="${field.id}"]`);
  if (!hint) return;
  const tpm = parseInt(field.value, 10);
  hint.textContent = Number.isFinite(tpm) && tpm > 0
    ? `RPM derived: 6 per 1,000 TPM = ${Math.max(1, Math.floor(tpm * 6 / 1000)).toLocaleString("en-US")}.`
    : "RPM derived: 6 per 1,000 TPM. Empty: the default quota.";
});
