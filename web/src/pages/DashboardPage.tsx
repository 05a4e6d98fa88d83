import { useEffect, useState } from "react";
import { api, describeError, type Schemas } from "../api/client";
import { DeleteAccount } from "./DeleteAccount";

const RANGES = [7, 30, 90];
const ZONES = Array.from(
  new Set([Intl.DateTimeFormat().resolvedOptions().timeZone, "UTC", "America/New_York", "Europe/Paris", "Asia/Tokyo"]),
);
const COLORS = ["#2563eb", "#d97706", "#059669", "#9333ea", "#dc2626"];

export function DashboardPage() {
  const [days, setDays] = useState(7);
  const [tz, setTz] = useState(ZONES[0] ?? "UTC");
  const [usage, setUsage] = useState<Schemas["UsageOut"] | null>(null);
  const [budget, setBudget] = useState<Schemas["BudgetOut"] | null>(null);
  const [error, setError] = useState<string | null>(null);

  useEffect(() => {
    void api.GET("/api/v1/user/usage", { params: { query: { days, tz } } }).then(({ data, error }) => {
      if (data) setUsage(data);
      else setError(describeError(error));
    });
  }, [days, tz]);
  useEffect(() => {
    void api.GET("/api/v1/user/budget").then(({ data }) => setBudget(data ?? null));
  }, []);

  const money = (value: number) =>
    new Intl.NumberFormat(undefined, { style: "currency", currency: budget?.currency ?? "USD", maximumFractionDigits: 4 }).format(value);

  return (
    <div className="dashboard">
      <h1>Usage</h1>
      <form className="filters" onSubmit={(e) => e.preventDefault()}>
        <label>
          Range
          <select value={days} onChange={(e) => setDays(Number(e.target.value))}>
            {RANGES.map((n) => (
              <option key={n} value={n}>
                Last {n} days
              </option>
            ))}
          </select>
        </label>
        <label>
          Time zone
          <select value={tz} onChange={(e) => setTz(e.target.value)}>
            {ZONES.map((zone) => (
              <option key={zone}>{zone}</option>
            ))}
          </select>
        </label>
      </form>
      {error && (
        <p role="alert" className="error">
          {error}
        </p>
      )}
      {budget && (
        <dl className="cards" aria-label="Budget">
          <div>
            <dt>Spent</dt>
            <dd>{money(budget.spend)}</dd>
          </div>
          <div>
            <dt>Remaining</dt>
            <dd>
              {money(budget.remaining)} of {money(budget.max_budget)}
            </dd>
          </div>
          <div>
            <dt>Resets</dt>
            <dd>{budget.resets_at ? new Date(budget.resets_at).toLocaleString() : "never"}</dd>
          </div>
        </dl>
      )}
      {usage && (
        <>
          <dl className="cards" aria-label="Totals for the range">
            <div>
              <dt>Messages</dt>
              <dd>{usage.totals.messages}</dd>
            </div>
            <div>
              <dt>Tokens</dt>
              <dd>{usage.totals.total_tokens.toLocaleString()}</dd>
            </div>
            <div>
              <dt>Cost</dt>
              <dd>{money(usage.totals.cost)}</dd>
            </div>
          </dl>
          <Chart title="Cost per day" usage={usage} value={(m) => m.cost} format={money} />
          <Chart title="Tokens per day" usage={usage} value={(m) => m.total_tokens} format={(n) => n.toLocaleString()} />
        </>
      )}
      <DeleteAccount />
    </div>
  );
}

type ModelDay = Schemas["UsageModelOut"];

/** Stacked bars per day, one colour per model; a table under it says the same in text. */
function Chart(props: {
  title: string;
  usage: Schemas["UsageOut"];
  value: (m: ModelDay) => number;
  format: (n: number) => string;
}) {
  const { usage, value, format } = props;
  const models = (usage.models ?? []).map((m) => m.model);
  const totals = usage.days.map((d) => (d.models ?? []).reduce((sum, m) => sum + value(m), 0));
  const max = Math.max(...totals, 0) || 1;
  const width = 1000;
  const height = 160;
  const slot = width / Math.max(usage.days.length, 1);
  const color = (model: string) => COLORS[models.indexOf(model) % COLORS.length];

  return (
    <figure className="chart">
      <figcaption>{props.title}</figcaption>
      <svg viewBox={`0 0 ${width} ${height + 20}`} role="img" aria-label={`${props.title}, ${usage.start} to ${usage.end}`}>
        {usage.days.map((day, i) => {
          let y = height;
          return (
            <g key={day.date}>
              {(day.models ?? []).map((m) => {
                const h = (value(m) / max) * height;
                y -= h;
                return (
                  <rect key={m.model} x={i * slot + slot * 0.15} y={y} width={slot * 0.7} height={h} fill={color(m.model)}>
                    <title>{`${day.date} ${m.model}: ${format(value(m))}`}</title>
                  </rect>
                );
              })}
              {usage.days.length <= 31 && (
                <text x={i * slot + slot / 2} y={height + 14} textAnchor="middle" fontSize="14">
                  {day.date.slice(8)}
                </text>
              )}
            </g>
          );
        })}
      </svg>
      <ul className="legend">
        {(usage.models ?? []).map((m) => (
          <li key={m.model}>
            <span className="swatch" style={{ background: color(m.model) }} aria-hidden="true" />
            {m.model}: {format(value(m))}
          </li>
        ))}
      </ul>
    </figure>
  );
}
