#!/usr/bin/env python3
"""Writes the prompt sets of the speculative-decoding benchmark (scripts/bench-speculative.sh) as
`inhaus bench serve --dataset` files, deterministically (no randomness, no downloads):

- copy.jsonl: copy-heavy work, the case prompt lookup is for. Four order documents of 1,000-1,500
  tokens with an instruction to return a JSON record of fields copied from them, and four Python
  modules with an instruction to return the module edited (a rename and a docstring).
- free.jsonl: prompts whose answers copy nothing (stories, explanations), where guesses fail.

Each line leaves `ignore_eos` off: the answer ends where the model ends it, as a user's would.
"""
import json
import pathlib

OUT = pathlib.Path(__file__).resolve().parent

CUSTOMERS = [
    ("Müller Maschinenbau GmbH", "Industriestraße 12", "70565 Stuttgart", "Frau Petra Wagner", "K-10442"),
    ("Schneider Antriebstechnik AG", "Am Hafen 3", "28217 Bremen", "Herr Jonas Becker", "K-20931"),
    ("Hoffmann Werkzeugbau KG", "Lindenweg 48", "90431 Nürnberg", "Frau Sabine Keller", "K-31877"),
    ("Bauer Präzisionsteile GmbH", "Gewerbepark Süd 7", "86156 Augsburg", "Herr Markus Vogel", "K-40219"),
]
PARTS = [
    ("HP-200", "Hydraulikpumpe 200 bar, Flanschausführung", 412.50),
    ("SK-14", "Dichtungssatz für Zylinder Baureihe 14", 38.90),
    ("PG-3", "Manometer 0-250 bar, Glyzerinfüllung", 54.20),
    ("VB-16", "Wegeventil 4/3, NG 6, 24 V DC", 189.00),
    ("FL-40", "Rücklauffilter 40 µm mit Verschmutzungsanzeige", 76.35),
    ("SCH-1/2", "Hochdruckschlauch 1/2 Zoll, 1,5 m, beidseitig Pressarmatur", 48.10),
    ("KU-22", "Kupplung Stecksystem 22 mm, Edelstahl", 23.75),
    ("MO-4K", "Drehstrommotor 4 kW, 1450 U/min, IE3", 655.00),
    ("TB-60", "Tankbaugruppe 60 l mit Ölstandsanzeige", 298.40),
    ("DR-8", "Drosselrückschlagventil, einstellbar, G 3/8", 41.60),
    ("SE-PT", "Drucksensor 4-20 mA, 0-400 bar", 132.80),
    ("ZY-50", "Hydraulikzylinder 50/30 Hub 300 mm", 347.25),
    ("OE-46", "Hydrauliköl HLP 46, Gebinde 20 l", 89.90),
    ("AK-12", "Akkumulator Blasenspeicher 1,2 l", 264.00),
    ("WK-30", "Wärmetauscher Öl/Luft 30 kW", 712.30),
    ("ST-M12", "Steckverbinder M12, 5-polig, geschirmt", 12.45),
]


def order_document(i):
    name, street, city, contact, number = CUSTOMERS[i]
    lines = [
        "AUFTRAGSBESTÄTIGUNG / ORDER CONFIRMATION",
        "",
        f"Kunde / Customer: {name}",
        f"Kundennummer / Customer number: {number}",
        f"Auftragsnummer / Order number: A-2026-{10573 + 97 * i}",
        f"Auftragsdatum / Order date: 2026-0{i + 3}-1{i + 2}",
        f"Ansprechpartner / Contact: {contact}",
        f"Lieferadresse / Delivery address: {street}, {city}, Deutschland",
        "Lieferbedingungen / Terms of delivery: DAP, Lieferung frei Haus ab 500 EUR Warenwert",
        "Zahlungsbedingungen / Terms of payment: 30 Tage netto, 2 % Skonto bei Zahlung innerhalb von 10 Tagen",
        "",
        "Positionen / Items:",
    ]
    total = 0.0
    for k in range(12):
        art, desc, price = PARTS[(k * 3 + i * 5) % len(PARTS)]
        qty = 1 + (k * 7 + i * 3) % 9
        total += qty * price
        lines.append(
            f"Pos. {k + 1:02d} | Artikel {art} | {desc} | Menge {qty} Stück | Einzelpreis {price:.2f} EUR | Gesamt {qty * price:.2f} EUR"
        )
    lines += [
        "",
        f"Nettobetrag / Net amount: {total:.2f} EUR",
        f"Umsatzsteuer 19 % / VAT 19 %: {total * 0.19:.2f} EUR",
        f"Gesamtbetrag / Total amount: {total * 1.19:.2f} EUR",
        "",
        "Bitte prüfen Sie die Auftragsbestätigung und teilen Sie uns Abweichungen innerhalb von drei Werktagen mit.",
        "Es gelten unsere Allgemeinen Geschäftsbedingungen in der Fassung vom 1. Januar 2026.",
        "Mit freundlichen Grüßen, Ihr Vertriebsinnendienst",
    ]
    doc = "\n".join(lines)
    instruction = (
        "Extract the order from this document as one JSON object with the keys customer, "
        "customer_number, order_number, order_date, contact, delivery_address and items, where items "
        "is a list of objects with the keys position, article, description, quantity and unit_price, "
        "copied exactly from the document. Answer with the JSON only.\n\n"
    )
    return instruction + doc


MODULE = '''import csv
import datetime
from dataclasses import dataclass


@dataclass
class Reading:
    sensor_id: str
    timestamp: datetime.datetime
    value: float
    unit: str


def load_readings(path):
    readings = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            readings.append(
                Reading(
                    sensor_id=row["sensor_id"],
                    timestamp=datetime.datetime.fromisoformat(row["timestamp"]),
                    value=float(row["value"]),
                    unit=row["unit"],
                )
            )
    return readings


def {fn}(readings, sensor_id):
    values = [r.value for r in readings if r.sensor_id == sensor_id]
    if not values:
        return None
    values.sort()
    middle = len(values) // 2
    if len(values) % 2 == 1:
        return values[middle]
    return (values[middle - 1] + values[middle]) / 2


def daily_maximum(readings, sensor_id):
    by_day = {{}}
    for r in readings:
        if r.sensor_id != sensor_id:
            continue
        day = r.timestamp.date()
        if day not in by_day or r.value > by_day[day]:
            by_day[day] = r.value
    return dict(sorted(by_day.items()))


def out_of_range(readings, low, high):
    flagged = []
    for r in readings:
        if r.value < low or r.value > high:
            flagged.append((r.sensor_id, r.timestamp.isoformat(), r.value))
    return flagged


def write_report(path, readings, sensors, low, high):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["sensor_id", "median", "days", "out_of_range"])
        for sensor_id in sensors:
            median = {fn}(readings, sensor_id)
            days = len(daily_maximum(readings, sensor_id))
            flagged = [x for x in out_of_range(readings, low, high) if x[0] == sensor_id]
            writer.writerow([sensor_id, median, days, len(flagged)])


def main():
    readings = load_readings("{src}.csv")
    sensors = sorted({{r.sensor_id for r in readings}})
    write_report("{src}_report.csv", readings, sensors, {low}, {high})


if __name__ == "__main__":
    main()
'''

EDITS = [
    ("median_value", "sensor_median", "readings", 10.0, 80.0),
    ("middle_value", "median_of_sensor", "line_3", -20.0, 45.5),
    ("calc_median", "median_reading", "hall_b", 0.5, 12.0),
    ("get_median", "compute_median", "press_7", 100.0, 250.0),
]


def code_edit(i):
    old, new, src, low, high = EDITS[i]
    code = MODULE.format(fn=old, src=src, low=low, high=high)
    return (
        f"Rename the function `{old}` to `{new}` everywhere in this module and add a one-line "
        f"docstring to `{new}`. Return the whole module, unchanged otherwise, in one Python code "
        f"block.\n\n```python\n{code}```"
    )


FREE = [
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain to a new employee why regular backups matter, in three paragraphs.",
    "Write a poem about the first snow of winter in a small mountain village.",
    "Describe a good onboarding day for a new software engineer, step by step.",
]


def main():
    copy = [order_document(i) for i in range(4)] + [code_edit(i) for i in range(4)]
    with open(OUT / "speculative-copy.jsonl", "w") as f:
        for p in copy:
            f.write(json.dumps({"prompt": p, "max_tokens": 500, "ignore_eos": False}, ensure_ascii=False) + "\n")
    with open(OUT / "speculative-free.jsonl", "w") as f:
        for p in FREE:
            f.write(json.dumps({"prompt": p, "max_tokens": 300, "ignore_eos": False}) + "\n")


if __name__ == "__main__":
    main()
