"""A small travel world used by the general-environment tests: a database and tools as a model would write
them (here written by hand), plus solutions and verifiers good and bad."""

from __future__ import annotations

import sqlite3
from pathlib import Path

TOOLS = '''
import json
from typing import Optional


def search_flights(db, origin: str, destination: str, max_price: Optional[float] = None) -> list[dict]:
    """Find flights between two airports, cheapest first.

    Args:
        origin: IATA code of the departure airport.
        destination: IATA code of the arrival airport.
        max_price: Leave out flights dearer than this (euros).
    """
    rows = db.execute("SELECT id, origin, destination, price, seats FROM flights WHERE origin = ? AND "
                      "destination = ? ORDER BY price", (origin, destination)).fetchall()
    return [dict(r) for r in rows if max_price is None or r["price"] <= max_price]


def book_flight(db, flight_id: int, passenger: str) -> dict:
    """Book one seat on a flight for a passenger.

    Args:
        flight_id: The flight's id from search_flights.
        passenger: The passenger's full name.
    """
    row = db.execute("SELECT seats FROM flights WHERE id = ?", (flight_id,)).fetchone()
    if row is None:
        raise ValueError(f"no flight {flight_id}")
    if row["seats"] < 1:
        raise ValueError(f"flight {flight_id} is full")
    db.execute("UPDATE flights SET seats = seats - 1 WHERE id = ?", (flight_id,))
    booked_at = now().isoformat()
    db.execute("INSERT INTO bookings (flight_id, passenger, booked_at) VALUES (?, ?, ?)",
               (flight_id, passenger, booked_at))
    return {"flight_id": flight_id, "passenger": passenger, "booked_at": booked_at}


def _helper(db):
    return 1


def no_docstring(db, x: int):
    return x
'''

SOLUTION = '''
def solve(tools):
    flights = tools.search_flights(origin="LIS", destination="OSL")
    cheapest = flights[0]
    return tools.book_flight(flight_id=cheapest["id"], passenger="Ada Lovelace")["flight_id"]
'''

ALTERNATIVE_SOLUTION = '''
def solve(tools):
    options = tools.search_flights(origin="LIS", destination="OSL", max_price=1000.0)
    best = min(options, key=lambda f: f["price"])
    tools.book_flight(flight_id=best["id"], passenger="Ada Lovelace")
    return best["id"]
'''

VERIFIER = '''
def check_booked_cheapest(state, answer):
    rows = state["bookings"]["rows"]
    return any(r[1] == 2 and r[2] == "Ada Lovelace" for r in rows)


def check_answer_is_flight(state, answer):
    return answer == 2
'''


WORLD_SQL = """
    CREATE TABLE flights (id INTEGER PRIMARY KEY, origin TEXT, destination TEXT, price REAL, seats INTEGER);
    CREATE TABLE bookings (id INTEGER PRIMARY KEY AUTOINCREMENT, flight_id INTEGER, passenger TEXT,
                           booked_at TEXT);
    INSERT INTO flights VALUES (1, 'LIS', 'OSL', 310.0, 4), (2, 'LIS', 'OSL', 180.5, 1),
                               (3, 'OSL', 'LIS', 99.0, 9);
"""


def make_world(path: Path) -> Path:
    db = sqlite3.connect(path)
    db.executescript(WORLD_SQL)
    db.commit()
    db.close()
    return path
