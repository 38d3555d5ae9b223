#!/usr/bin/env python3
"""Writes the example's workbook (checked in next to this script), as finance would send it:
a title block above the table, a merged region label, dates, a text-coded SKU with leading
zeros, and a formula error. Run it only to change it:

    python3 -m venv /tmp/v && /tmp/v/bin/pip install openpyxl
    /tmp/v/bin/python examples/file_ingestion/excel/data/make_workbook.py
"""
import datetime as dt
import os

import openpyxl

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reports")
FIXED = dt.datetime(2024, 7, 1, 12, 0, 0)

wb = openpyxl.Workbook()
wb.properties.creator = "finance"
wb.properties.created = FIXED
wb.properties.modified = FIXED
ws = wb.active
ws.title = "Sales"
ws["A1"] = "Sales report Q2 2024"
ws["A2"] = "Confidential - generated 2024-07-01"
ws.append([])
ws.append(["region", "sku", "sold_on", "units", "unit_price", "margin"])
rows = [
    ["North", "00123", dt.date(2024, 4, 2), 12, 9.5, 0.25],
    [None, "00124", dt.date(2024, 4, 3), 7, 12, 0.3],
    ["South", "00125", dt.date(2024, 5, 17), 3, 99.99, "#DIV/0!"],
    ["South", "00126", dt.date(2024, 6, 30), 25, 1.25, 0.1],
]
for r in rows:
    ws.append(r)
# The region label "North" is merged over two rows, as people lay out reports.
ws.merge_cells("A5:A6")
for row in ws.iter_rows(min_row=5, min_col=3, max_col=3):
    row[0].number_format = "yyyy-mm-dd"
notes = wb.create_sheet("Notes")
notes["A1"] = "Units are net of returns."
os.makedirs(HERE, exist_ok=True)
wb.save(os.path.join(HERE, "sales-2024-Q2.xlsx"))
