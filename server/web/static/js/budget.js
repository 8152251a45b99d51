// Budgets in words: amounts, when a budget refills, and why a message was refused for one.

/** Tokens with the reader's separators; a cost in US dollars to four places. */
export const amount = (kind, value) =>
  kind === "tokens" ? Math.trunc(Number(value) || 0).toLocaleString() : `$${(Number(value) || 0).toFixed(4)}`;

/** When a budget refills, in the reader's time and from now: "on Dec 4, 2026, 1:00 AM (in 15 h 38 min)". */
export function refillWords(iso) {
  const when = new Date(iso);
  if (Number.isNaN(when.getTime())) return "later";
  const minutes = Math.max(0, Math.ceil((when.getTime() - Date.now()) / 60_000));
  const parts = [
    [Math.floor(minutes / 1440), "d"],
    [Math.floor((minutes % 1440) / 60), "h"],
    [minutes % 60, "min"],
  ];
  const wait = parts.filter(([count]) => count).map(([count, unit]) => `${count} ${unit}`).join(" ") || "a moment";
  return `on ${when.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" })} (in ${wait})`;
}

/** A message refused because a budget is used up: which one, spent against the limit, and when it refills. */
export function budgetRefusal(budget) {
  const kind = budget.kind === "cost_usd" ? "cost_usd" : "tokens";
  const period = budget.period === "day" ? "daily" : "monthly";
  const unit = kind === "tokens" ? " tokens" : "";
  return (
    `Your ${period} ${kind === "tokens" ? "token" : "cost"} budget is used up: ` +
    `${amount(kind, budget.spent)} of ${amount(kind, budget.limit)}${unit} spent. It refills ${refillWords(budget.refills_at)}.`
  );
}
