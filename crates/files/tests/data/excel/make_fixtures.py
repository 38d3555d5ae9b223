#!/usr/bin/env python3
"""Writes the Excel source's test workbooks (checked in next to this script).

Run it only to change the fixtures; the tests read the files, not this script:

    python3 -m venv /tmp/xlvenv && /tmp/xlvenv/bin/pip install openpyxl xlwt odfpy
    /tmp/xlvenv/bin/python crates/files/tests/data/excel/make_fixtures.py

Files (the values are asserted exactly in tests/excel_to_parquet.rs):

- book.xlsx: sheets Orders (every cell type, a merged cell, an error cell, an empty row),
  Returns, and Report (a title block above the header on row 4).
- regions.xlsx: sheets North and South with the same columns (`sheets: all`).
- simple.xlsx, simple.xls, simple.ods: one sheet, the same rows in each format.
- mac1904.xlsx: a workbook with the 1904 date system (old Excel for Mac).
"""

import datetime as dt
import os

import openpyxl
import xlwt
from odf.opendocument import OpenDocumentSpreadsheet
from odf.table import Table, TableCell, TableRow
from odf.text import P

HERE = os.path.dirname(os.path.abspath(__file__))
# Fixed document properties, so that running the script again changes nothing that matters.
FIXED = dt.datetime(2024, 7, 1, 12, 0, 0)


def xlsx_workbook():
    wb = openpyxl.Workbook()
    wb.properties.creator = "tributary"
    wb.properties.created = FIXED
    wb.properties.modified = FIXED
    return wb


def book():
    wb = xlsx_workbook()
    orders = wb.active
    orders.title = "Orders"
    orders.append(
        ["id", "customer", "amount", "paid", "qty", "order_date", "shipped_at", "region",
         "code", "ratio"]
    )
    rows = [
        [1, "ann", 10.5, True, 3, dt.date(2024, 1, 15), dt.datetime(2024, 1, 15, 9, 30),
         "North", "A1", 0.5],
        [2, "bob", 20, False, 2.5, dt.date(2024, 2, 29),
         dt.datetime(2024, 3, 1, 17, 45, 30, 250000), None, 7, 1],
        [3, "cy", 7.25, True, 4, dt.date(1999, 12, 31), dt.datetime(2000, 1, 1),
         "South", "B2", "#DIV/0!"],
        [None] * 10,
        [4, "dee", -3, False, 5, dt.date(2024, 6, 1), dt.datetime(2024, 6, 1, 23, 59, 59),
         None, True, 2],
    ]
    for r in rows:
        orders.append(r)
    # H2:H3 merged: only H2 holds "North"; H3 reads as empty.
    orders.merge_cells("H2:H3")
    for row in orders.iter_rows(min_row=2, min_col=6, max_col=6):
        row[0].number_format = "yyyy-mm-dd"
    for row in orders.iter_rows(min_row=2, min_col=7, max_col=7):
        row[0].number_format = "yyyy-mm-dd hh:mm:ss.000"

    returns = wb.create_sheet("Returns")
    returns.append(["order_id", "reason"])
    returns.append([2, "damaged"])
    returns.append([4, "late"])

    report = wb.create_sheet("Report")
    report["A1"] = "Quarterly report"
    report["A2"] = "generated 2024-07-01"
    report["A4"], report["B4"] = "sku", "units"
    report["A5"], report["B5"] = "X-1", 12
    report["A6"], report["B6"] = "X-2", 30
    wb.save(os.path.join(HERE, "book.xlsx"))


def regions():
    wb = xlsx_workbook()
    north = wb.active
    north.title = "North"
    north.append(["id", "amount"])
    north.append([1, 100])
    north.append([2, 150])
    south = wb.create_sheet("South")
    south.append(["id", "amount"])
    south.append([3, 70])
    wb.save(os.path.join(HERE, "regions.xlsx"))


SIMPLE_HEADER = ["id", "name", "price", "active", "day"]
SIMPLE_ROWS = [
    [1, "alpha", 1.5, True, dt.datetime(2024, 3, 1)],
    [2, "beta", 2, False, dt.datetime(2024, 3, 2, 12, 0)],
    [3, "gamma", None, True, None],
]


def simple_xlsx():
    wb = xlsx_workbook()
    ws = wb.active
    ws.title = "Items"
    ws.append(SIMPLE_HEADER)
    for r in SIMPLE_ROWS:
        ws.append(r)
    for row in ws.iter_rows(min_row=2, min_col=5, max_col=5):
        row[0].number_format = "yyyy-mm-dd hh:mm"
    wb.save(os.path.join(HERE, "simple.xlsx"))


def simple_xls():
    wb = xlwt.Workbook()
    ws = wb.add_sheet("Items")
    date_style = xlwt.easyxf(num_format_str="YYYY-MM-DD HH:MM")
    for c, name in enumerate(SIMPLE_HEADER):
        ws.write(0, c, name)
    for r, values in enumerate(SIMPLE_ROWS, start=1):
        for c, v in enumerate(values):
            if v is None:
                continue
            if isinstance(v, dt.datetime):
                ws.write(r, c, v, date_style)
            else:
                ws.write(r, c, v)
    wb.save(os.path.join(HERE, "simple.xls"))


def ods_cell(v):
    if v is None:
        return TableCell()
    if isinstance(v, bool):
        cell = TableCell(valuetype="boolean", booleanvalue="true" if v else "false")
        text = "TRUE" if v else "FALSE"
    elif isinstance(v, (int, float)):
        cell = TableCell(valuetype="float", value=str(v))
        text = str(v)
    elif isinstance(v, dt.datetime):
        iso = v.strftime("%Y-%m-%d") if v.time() == dt.time() else v.strftime("%Y-%m-%dT%H:%M:%S")
        cell = TableCell(valuetype="date", datevalue=iso)
        text = iso
    else:
        cell = TableCell(valuetype="string")
        text = str(v)
    cell.addElement(P(text=text))
    return cell


def simple_ods():
    doc = OpenDocumentSpreadsheet()
    table = Table(name="Items")
    for values in [SIMPLE_HEADER] + SIMPLE_ROWS:
        tr = TableRow()
        for v in values:
            tr.addElement(ods_cell(v))
        table.addElement(tr)
    doc.spreadsheet.addElement(table)
    doc.save(os.path.join(HERE, "simple.ods"))


def mac1904():
    wb = xlsx_workbook()
    wb.epoch = openpyxl.utils.datetime.CALENDAR_MAC_1904
    ws = wb.active
    ws.title = "Dates"
    ws.append(["day"])
    ws.append([dt.datetime(2024, 3, 1, 6, 0)])
    ws["A2"].number_format = "yyyy-mm-dd hh:mm"
    wb.save(os.path.join(HERE, "mac1904.xlsx"))


if __name__ == "__main__":
    book()
    regions()
    simple_xlsx()
    simple_xls()
    simple_ods()
    mac1904()
