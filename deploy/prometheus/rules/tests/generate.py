"""Writes the promtool tests overdue.yml and time_to_detect.yml beside this script.

The due times in them are computed with exporter.schedule for real dates (a DST change, a
31st-of-month schedule), then shifted so that promtool's time 0 is a chosen instant. Run from
the repository root:  python deploy/prometheus/rules/tests/generate.py [--check]
(--check: exit 1 if the committed files differ; tests/test_rules.py runs it).
"""
# ruff: noqa: E501
import json
import math
import sys
from datetime import datetime, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[3]
sys.path.insert(0, str(ROOT))
from exporter import schedule as S  # noqa: E402

OUT: dict[str, str] = {}

UTC = timezone.utc
def ts(*a): return int(datetime(*a, tzinfo=UTC).timestamp())
J = 'job="docspace",instance="exp:10057"'

def series(name, portal, values, extra=""):
    lab = f'{J},portal="{portal}"' + (f",{extra}" if extra else "")
    return f"      - series: '{name}{{{lab}}}'\n        values: '{values}'\n"

def base(portal, n, url=True):
    out = series("docspace_portal_info", portal, f"1x{n}", f'url="https://{portal}.example"')
    out += series("docspace_backup_schedule_configured", portal, f"1x{n}")
    return out

RULES = {r["alert"]: r for g in yaml.safe_load((HERE.parent / "docspace-backup.rules.yml").read_text())["groups"] for r in g["rules"] if "alert" in r}

def humanize_duration(v):
    """Prometheus's humanizeDuration for whole seconds >= 1."""
    v = int(v)
    sign = "-" if v < 0 else ""
    v = abs(v)
    d, r = divmod(v, 86400)
    h, r = divmod(r, 3600)
    m, s_ = divmod(r, 60)
    if d:
        return f"{sign}{d}d {h}h {m}m {s_}s"
    if h:
        return f"{sign}{h}h {m}m {s_}s"
    if m:
        return f"{sign}{m}m {s_}s"
    return f"{sign}{s_}s"

def render(text, portal, value):
    text = " ".join(text.split()) if "\n" in text else text
    text = text.replace("{{ $labels.portal }}", portal).replace("{{ $labels.job }}", "docspace")
    text = text.replace("{{ $value | humanizeDuration }}", humanize_duration(value))
    return text.replace("{{ $value }}", f"{value:g}")

def exp(alert, portal, severity, value):
    out = (f"          - exp_labels:\n              severity: {severity}\n              job: docspace\n"
           f"              instance: exp:10057\n              portal: {portal}\n"
           f"            exp_annotations:\n")
    for k, v in RULES[alert]["annotations"].items():
        out += f"              {k}: {json.dumps(render(v, portal, value))}\n"
    return out

def check(alert, at, portals_sev):
    s = f"      - eval_time: {at}\n        alertname: {alert}\n"
    if not portals_sev:
        return s + "        exp_alerts: []\n"
    s += "        exp_alerts:\n"
    for p, sev, value in portals_sev:
        s += exp(alert, p, sev, value)
    return s

out = ["""# promtool unit tests: schedule-exact alerts (Overdue across DST and a 31st-of-month
# schedule, TariffBlocksBackups, TariffDueSoon, BackupLeftNoCopy).
# Run: promtool test rules deploy/prometheus/rules/tests/*.yml
#
# promtool's clock starts at 0. The rules only compare timestamps with time(), so each case
# shifts real instants by a reference T (promtool's 0): value = real Unix time - T. The next due
# times below were computed with exporter.schedule for the real dates in the comments
# (tests/test_rules_schedule.py recomputes them). Checks sit one minute away from each
# threshold, never on a range boundary (Prometheus 3 range selectors are left-open).
rule_files:
  - ../docspace-backup.rules.yml

evaluation_interval: 1m

tests:
"""]

berlin = ZoneInfo("Europe/Berlin")
ny = ZoneInfo("America/New_York")
# --- DST: Berlin springs forward on 2026-03-29 (02:00 CET -> 03:00 CEST)
T = ts(2026, 3, 29, 23)
last = ts(2026, 3, 29, 1, 5)   # ran at 03:05 CEST on the day of the change
due = S.next_due("daily", 2, 0, last, berlin, last)
assert due == ts(2026, 3, 30, 0), datetime.fromtimestamp(due, UTC)
ran_at = due + 600
due2 = S.next_due("daily", 2, 0, ran_at, berlin, ran_at)
assert due2 == ts(2026, 3, 31, 0)
n = 200
out.append("""  # Europe/Berlin, daily at 02:00 portal time, the day after spring forward. T = 2026-03-29
  # 23:00Z. Last run 2026-03-29 01:05Z (03:05 CEST); next due 2026-03-30 02:00 CEST = 00:00Z
  # (T+60m; a fixed +01:00 offset would say 01:00Z). berlin-missed never runs; berlin-ran runs
  # 10 minutes after its due time, and the exporter shows the next day's due time from 71m.
  - interval: 1m
    input_series:
""")
out.append(base("berlin-missed", n) + base("berlin-ran", n))
out.append(series("docspace_backup_schedule_last_backup_timestamp_seconds", "berlin-missed", f"{last-T}x{n}"))
out.append(series("docspace_backup_schedule_next_due_timestamp_seconds", "berlin-missed", f"{due-T}x{n}"))
out.append(series("docspace_backup_schedule_last_backup_timestamp_seconds", "berlin-ran", f"{last-T}x70 {ran_at-T}x{n-71}"))
out.append(series("docspace_backup_schedule_next_due_timestamp_seconds", "berlin-ran", f"{due-T}x70 {due2-T}x{n-71}"))
out.append("    alert_rule_test:\n")
out.append("      # Due at 60m: the condition holds from 106m (45 min late), `for: 15m` -> fires at 121m.\n")
out.append(check("DocSpaceBackupOverdue", "104m", []))
out.append(check("DocSpaceBackupOverdue", "120m", []))
out.append(check("DocSpaceBackupOverdue", "122m", [("berlin-missed", "critical", 122*60 - (due - T))]))
out.append(check("DocSpaceBackupOverdue", "190m", [("berlin-missed", "critical", 190*60 - (due - T))]))
out.append(check("DocSpaceBackupStale", "190m", []))

# --- DST: New York falls back on 2026-11-01 (02:00 EDT -> 01:00 EST); 01:00 happens twice
T = ts(2026, 11, 1, 4)
last = ts(2026, 10, 31, 5, 4)   # 01:04 EDT on Oct 31
due = S.next_due("daily", 1, 0, last, ny, last)
assert due == ts(2026, 11, 1, 5)  # first occurrence, 01:00 EDT
n = 200
out.append("""
  # America/New_York, daily at 01:00, on the night it falls back (01:00 happens twice). T =
  # 2026-11-01 04:00Z. Due at the first 01:00 (EDT) = 05:00Z = T+60m, not at the second
  # (06:00Z). Fires 121m after T, i.e. 61 minutes after the due time.
  - interval: 1m
    input_series:
""")
out.append(base("newyork-missed", n))
out.append(series("docspace_backup_schedule_last_backup_timestamp_seconds", "newyork-missed", f"{last-T}x{n}"))
out.append(series("docspace_backup_schedule_next_due_timestamp_seconds", "newyork-missed", f"{due-T}x{n}"))
out.append("    alert_rule_test:\n")
out.append(check("DocSpaceBackupOverdue", "104m", []))
out.append(check("DocSpaceBackupOverdue", "120m", []))
out.append(check("DocSpaceBackupOverdue", "122m", [("newyork-missed", "critical", 122*60 - (due - T))]))

# --- 31st of the month: Aug 31 -> Oct 31 (September has no 31st)
T = ts(2026, 10, 30)
last = ts(2026, 8, 31, 0, 5)  # 02:05 CEST
due = S.next_due("monthly", 2, 31, last, berlin, last)
assert due == ts(2026, 10, 31, 1), datetime.fromtimestamp(due, UTC)  # 02:00 CET after fall back
interval = S.expected_interval_seconds("monthly", 31)
n = 1600
out.append(f"""
  # Europe/Berlin, monthly on day 31 at 02:00. T = 2026-10-30 00:00Z, 60 days after the last
  # run (2026-08-31 00:05Z); September has no 31st, so the next due time is 2026-10-31 02:00
  # CET = 01:00Z = T+1500m. With the exact interval ({interval} s, 61 days) DocSpaceBackupStale
  # stays quiet; with the old fixed 31 days (day31-fixed-31d) it fired weeks too early.
  - interval: 1m
    input_series:
""")
out.append(base("day31", n) + base("day31-fixed-31d", n))
for p, iv in (("day31", interval), ("day31-fixed-31d", 2678400)):
    out.append(series("docspace_backup_schedule_last_backup_timestamp_seconds", p, f"{last-T}x{n}"))
    out.append(series("docspace_backup_schedule_expected_interval_seconds", p, f"{int(iv)}x{n}"))
out.append(series("docspace_backup_schedule_next_due_timestamp_seconds", "day31", f"{due-T}x{n}"))
out.append("    alert_rule_test:\n")
out.append(check("DocSpaceBackupStale", "60m", [("day31-fixed-31d", "critical", 60*60 - (last - T))]))
out.append(check("DocSpaceBackupOverdue", "1440m", []))
out.append(check("DocSpaceBackupOverdue", "1560m", []))
out.append(check("DocSpaceBackupOverdue", "1562m", [("day31", "critical", 1562*60 - (due - T))]))
out.append(check("DocSpaceBackupStale", "1562m", [("day31-fixed-31d", "critical", 1562*60 - (last - T))]))

# --- tariff
n = 120
out.append("""
  # Tariff: Delay blocks scheduled backups (fires after 15m), a paid tariff does not; a paid
  # tariff due in 6 days warns after 1h, one due in 30 days does not, nor does a portal already
  # in Delay (DocSpaceTariffBlocksBackups covers it). late-payer pays at 60m: the alert ends.
  - interval: 1m
    input_series:
""")
for p in ("delay", "paid-far", "paid-soon", "late-payer"):
    out.append(base(p, n))
states = {"delay": "delay", "paid-far": "paid", "paid-soon": "paid"}
for p, st in states.items():
    for s_ in ("trial", "paid", "delay", "not_paid"):
        out.append(series("docspace_portal_tariff_state", p, f"{1 if s_ == st else 0}x{n}", f'state="{s_}"'))
for s_, v in (("trial", "0x120"), ("paid", "0x59 1x60"), ("delay", "0x0 1x58 0x60"), ("not_paid", "0x120")):
    out.append(series("docspace_portal_tariff_state", "late-payer", v, f'state="{s_}"'))
out.append(series("docspace_portal_tariff_due_timestamp_seconds", "delay", f"-432000x{n}"))
out.append(series("docspace_portal_tariff_due_timestamp_seconds", "paid-far", f"{30*86400}x{n}"))
out.append(series("docspace_portal_tariff_due_timestamp_seconds", "paid-soon", f"{6*86400}x{n}"))
out.append("    alert_rule_test:\n")
out.append(check("DocSpaceTariffBlocksBackups", "14m", []))
out.append(check("DocSpaceTariffBlocksBackups", "16m", [("delay", "critical", 1), ("late-payer", "critical", 1)]))
out.append(check("DocSpaceTariffBlocksBackups", "62m", [("delay", "critical", 1)]))
out.append(check("DocSpaceTariffDueSoon", "59m", []))
out.append(check("DocSpaceTariffDueSoon", "61m", [("paid-soon", "warning", 6*86400 - 61*60)]))

# --- left no copy
n = 150
out.append("""
  # history: true. failed-run: the scheduler started a run 2h ago and the newest copy is a day
  # older (the failed task has already left getbackupprogress: all statuses 0) -> fires after
  # 30m and stays. ok-run: its copy came 433 s after the start. running: still running.
  # recent: started 10 min ago; the condition starts 50m later (1h after the start), fires 30m
  # after that.
  - interval: 1m
    input_series:
""")
cases = {"failed-run": (-7200, -7200 - 86400 + 433, "0x150"),
         "ok-run": (-7200, -7200 + 433, "0x150"),
         "running": (-7200, -7200 - 86400 + 433, "1x150"),
         "recent": (-600, -600 - 86400 + 433, "0x150")}
for p, (lb, ls, running) in cases.items():
    out.append(base(p, n))
    out.append(series("docspace_backup_schedule_last_backup_timestamp_seconds", p, f"{lb}x{n}"))
    out.append(series("docspace_backup_last_success_timestamp_seconds", p, f"{ls}x{n}"))
    for s_ in ("created", "running", "completed", "canceled", "failed"):
        out.append(series("docspace_backup_status", p, running if s_ == "running" else "0x150", f'status="{s_}"'))
out.append("    alert_rule_test:\n")
out.append(check("DocSpaceBackupLeftNoCopy", "29m", []))
out.append(check("DocSpaceBackupLeftNoCopy", "31m", [("failed-run", "warning", 86400 - 433)]))
out.append(check("DocSpaceBackupLeftNoCopy", "79m", [("failed-run", "warning", 86400 - 433)]))
out.append(check("DocSpaceBackupLeftNoCopy", "82m", [("failed-run", "warning", 86400 - 433), ("recent", "warning", 86400 - 433)]))
OUT["overdue.yml"] = "".join(out)

# ---------------------------------------------------------------------------------------------
# time_to_detect.yml: a scheduled run that never happens, per schedule period. The missed due
# time is D; the previous run started 5 minutes after the previous due time. Before = only
# DocSpaceBackupStale (1.5 x interval + for 30m), all that main had; after = DocSpaceBackupOverdue.
# Each case puts promtool's 0 at D + SHIFT (SHIFT = a whole number of minutes chosen so that
# the alert fires within the case's 2-hour window); the detection time is SHIFT + the eval
# time at which the alert is first seen firing (checked quiet one minute before).
ttd = ["""# promtool unit tests that MEASURE the time from a missed scheduled backup to the alert, per
# schedule period: before this change (only DocSpaceBackupStale: 1.5 x the expected interval +
# `for: 30m`) and after (DocSpaceBackupOverdue). D is the due time the scheduler missed; the
# previous run started 5 minutes after the previous due time. Each case puts promtool's time 0
# at D + SHIFT (given in its comment) so that it runs for two hours only; detection time =
# SHIFT + the first evaluation that shows the alert firing (it is checked quiet a minute
# before). README "Time to detect" quotes these numbers.
# Run: promtool test rules deploy/prometheus/rules/tests/*.yml
rule_files:
  - ../docspace-backup.rules.yml

evaluation_interval: 1m

tests:
"""]
results = []
periods = [  # name, gap before the missed due time (s), expected interval metric (s)
    ("daily", 86400, 86400),
    ("weekly", 604800, 604800),
    ("monthly-day15", 31 * 86400, 2678400),
    ("monthly-day31", 61 * 86400, int(S.expected_interval_seconds("monthly", 31))),
]
def first_fire(threshold, for_s):
    """Seconds after D at which an alert fires: first 1m evaluation strictly past the
    condition's threshold, plus `for`."""
    return (math.floor(threshold / 60) + 1) * 60 + for_s
W = 120  # minutes per case
def case(name, comment, shift, last, iv, due, alert, fire_at, value):
    ttd.append(f"  # {comment} SHIFT = {shift} s.\n  - interval: 1m\n    input_series:\n")
    ttd.append(base(name, W))
    ttd.append(series("docspace_backup_schedule_last_backup_timestamp_seconds", name, f"{last - shift}x{W}"))
    ttd.append(series("docspace_backup_schedule_expected_interval_seconds", name, f"{iv}x{W}"))
    ttd.append(series("docspace_backup_schedule_next_due_timestamp_seconds", name, f"{due - shift}x{W}"))
    ttd.append("    alert_rule_test:\n")
    at = (fire_at - shift) // 60
    assert 2 <= at < W
    ttd.append(check(alert, f"{at - 1}m", []))
    ttd.append(check(alert, f"{at}m", [(name, "critical", value)]))
for name, gap, iv in periods:
    last = -gap + 300
    overdue_at = first_fire(2700, 900)
    stale_at = first_fire(1.5 * iv + last, 1800)
    results.append((name, gap, iv, stale_at, overdue_at))
    case(f"{name}-after", f"{name}: after, DocSpaceBackupOverdue fires {humanize_duration(overdue_at)} after D.",
         0, last, iv, 0, "DocSpaceBackupOverdue", overdue_at, overdue_at)
    shift = (stale_at // 60 - 60) * 60
    case(f"{name}-before", f"{name}: before, DocSpaceBackupStale fires {humanize_duration(stale_at)} after D.",
         shift, last, iv, 0, "DocSpaceBackupStale", stale_at, stale_at - last)

# monthly day 31 with main's fixed 31-day interval: a false alarm before the slot. Here D is
# the next due time, 61 days after a run that started on time.
gap = 61 * 86400
last = -gap + 300
false_at = first_fire(1.5 * 2678400 + last, 1800)  # negative: before D
shift = (false_at // 60 - 60) * 60
case("monthly-day31-fixed-31d",
     f"monthly-day31 with main's fixed 31-day interval: DocSpaceBackupStale fires {humanize_duration(-false_at)} BEFORE D, a false alarm (the run before D was on time).",
     shift, last, 2678400, 0, "DocSpaceBackupStale", false_at, false_at - last)
OUT["time_to_detect.yml"] = "".join(ttd)
for r in results:
    print(f"{r[0]}: before {humanize_duration(r[3])}, after {humanize_duration(r[4])}")
print(f"monthly-day31 with the fixed 31 days: false alarm {humanize_duration(-false_at)} before D")
stale = [n for n, text in OUT.items() if (HERE / n).read_text() != text] if "--check" in sys.argv else []
if "--check" in sys.argv:
    if stale:
        print("out of date:", ", ".join(stale))
        sys.exit(1)
else:
    for n, text in OUT.items():
        (HERE / n).write_text(text)
