// What the user spent today and this month, against their budget, in the sidebar; read again after each answer.
import * as api from "/web/js/api.js";
import { amount, refillWords } from "/web/js/budget.js";
import { $, h } from "/web/js/dom.js";

const PERIODS = [
  ["day", "Today"],
  ["month", "This month"],
];

/** One kind of spending ("tokens" or "cost_usd") of a period: as shown, and how much of its limit it used. */
function spent(period, kind) {
  const limit = period[`limit_${kind}`];
  const shown = amount(kind, period[kind]);
  if (limit == null) return { text: shown, used: null };
  return { text: `${shown} of ${amount(kind, limit)}`, used: limit > 0 ? period[kind] / limit : 1 };
}

function row(period, label) {
  const tokens = spent(period, "tokens");
  const cost = spent(period, "cost_usd");
  const value = h("dd", {}, `${tokens.text} tokens · ${cost.text}`);
  const limits = [tokens.used, cost.used].filter((used) => used != null);
  if (limits.length) {
    const used = Math.max(...limits);
    value.append(
      h("meter", { min: 0, max: 1, low: 0.8, high: 0.95, optimum: 0, value: Math.min(used, 1), "aria-label": `${label}: share of the budget used` }),
      h("span", {
        class: used >= 1 ? "refill used-up" : "refill",
        text: `${used >= 1 ? "Used up; refills" : "Refills"} ${refillWords(period.refills_at)}.`,
      }),
    );
  }
  return [h("dt", { text: label }), value];
}

/** Read the user's usage and show it; a failure leaves what was shown (it is a convenience, not the chat). */
export async function refreshSpending() {
  try {
    const usage = await api.json(api.asUser("/api/v1/auth/me/usage"));
    $("spending-list").replaceChildren(...PERIODS.flatMap(([key, label]) => row(usage[key], label)));
    $("spending").hidden = false;
  } catch {
    // The next answer reads it again.
  }
}
