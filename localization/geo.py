"""UTM <-> latitude/longitude on the WGS84 ellipsoid, and the positions carried by datasets_vg file names.

The projection is the transverse Mercator of UTM (scale 0.9996 on the central meridian, false easting 500 km,
false northing 10 000 km south of the equator), computed with Krüger's series in the third flattening n to
order n³: sub-millimetre within a UTM zone. All functions take and return numpy arrays (one value per point).

datasets_vg names: '@easting@northing@zone number@zone letter@latitude@longitude@...@.jpg'; fields 3-6 are
optional (the synthetic world, for one, puts other fields there).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from commons import UserError
from datasets_ws import utms_of

A_WGS84, F_WGS84 = 6378137.0, 1 / 298.257223563  # semi-major axis (m), flattening
K0, FALSE_EASTING, FALSE_NORTHING_SOUTH = 0.9996, 500000.0, 10000000.0
BANDS = "CDEFGHJKLMNPQRSTUVWX"  # latitude bands of 8° from 80°S (X: 72°N-84°N); N and after: northern hemisphere

_N = F_WGS84 / (2 - F_WGS84)  # third flattening
_RECTIFYING_RADIUS = A_WGS84 / (1 + _N) * (1 + _N ** 2 / 4 + _N ** 4 / 64)
_E = 2 * math.sqrt(_N) / (1 + _N)  # first eccentricity
_ALPHA = (_N / 2 - 2 * _N ** 2 / 3 + 5 * _N ** 3 / 16, 13 * _N ** 2 / 48 - 3 * _N ** 3 / 5, 61 * _N ** 3 / 240)
_BETA = (_N / 2 - 2 * _N ** 2 / 3 + 37 * _N ** 3 / 96, _N ** 2 / 48 + _N ** 3 / 15, 17 * _N ** 3 / 480)
_DELTA = (2 * _N - 2 * _N ** 2 / 3 - 2 * _N ** 3, 7 * _N ** 2 / 3 - 8 * _N ** 3 / 5, 56 * _N ** 3 / 15)
_J = np.arange(1, 4)[:, None]  # series orders 1..3, broadcast against points


def central_meridian(zone_number: np.ndarray) -> np.ndarray:
    """Longitude (degrees) of the central meridian of UTM zones 1..60."""
    return 6.0 * np.asarray(zone_number, dtype=np.float64) - 183.0


def zone_of(lat: np.ndarray, lon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(zone numbers, band letters) of points: 6° zones from 180°W, with the Norway and Svalbard exceptions."""
    lat, lon = np.asarray(lat, dtype=np.float64), np.asarray(lon, dtype=np.float64)
    number = (np.floor((lon + 180) / 6).astype(np.int64) % 60) + 1
    number = np.where((lat >= 56) & (lat < 64) & (lon >= 3) & (lon < 12), 32, number)
    svalbard = (lat >= 72) & (lat < 84) & (lon >= 0) & (lon < 42)
    number = np.where(svalbard, 2 * np.floor((lon + 3) / 12).astype(np.int64) + 31, number)
    bands = np.array(list(BANDS))[np.clip(np.floor((lat + 80) / 8).astype(np.int64), 0, len(BANDS) - 1)]
    return number, bands


def latlon_to_utm(lat: np.ndarray, lon: np.ndarray,
                  zone_number: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(easting, northing, zone number) of points given in degrees; zone_number defaults to each point's own."""
    lat, lon = np.asarray(lat, dtype=np.float64), np.asarray(lon, dtype=np.float64)
    number = zone_of(lat, lon)[0] if zone_number is None else np.broadcast_to(zone_number, lat.shape)
    phi, dlam = np.radians(lat), np.radians(lon - central_meridian(number))
    t = np.sinh(np.arctanh(np.sin(phi)) - _E * np.arctanh(_E * np.sin(phi)))
    xi, eta = np.arctan2(t, np.cos(dlam)), np.arctanh(np.sin(dlam) / np.sqrt(1 + t * t))
    alpha = np.array(_ALPHA)[:, None]
    xi_f, eta_f = xi.reshape(1, -1), eta.reshape(1, -1)  # 1×P against the 3×1 series orders
    east = eta_f + (alpha * np.cos(2 * _J * xi_f) * np.sinh(2 * _J * eta_f)).sum(0)
    north = xi_f + (alpha * np.sin(2 * _J * xi_f) * np.cosh(2 * _J * eta_f)).sum(0)
    easting = FALSE_EASTING + K0 * _RECTIFYING_RADIUS * east.reshape(lat.shape)
    northing = K0 * _RECTIFYING_RADIUS * north.reshape(lat.shape) + np.where(lat < 0, FALSE_NORTHING_SOUTH, 0.0)
    return easting, northing, np.asarray(number)


def utm_to_latlon(easting: np.ndarray, northing: np.ndarray, zone_number: np.ndarray,
                  northern: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(latitude, longitude) in degrees of UTM points of the given zone numbers and hemispheres."""
    easting, northing, zone_number, northern = np.broadcast_arrays(
        np.asarray(easting, dtype=np.float64), np.asarray(northing, dtype=np.float64), zone_number, northern)
    shape = easting.shape
    north_m = northing - np.where(northern, 0.0, FALSE_NORTHING_SOUTH)
    xi = (north_m / (K0 * _RECTIFYING_RADIUS)).reshape(1, -1)  # 1×P against the 3×1 series orders
    eta = ((easting - FALSE_EASTING) / (K0 * _RECTIFYING_RADIUS)).reshape(1, -1)
    beta = np.array(_BETA)[:, None]
    xi_p = xi - (beta * np.sin(2 * _J * xi) * np.cosh(2 * _J * eta)).sum(0)
    eta_p = eta - (beta * np.cos(2 * _J * xi) * np.sinh(2 * _J * eta)).sum(0)
    chi = np.arcsin(np.sin(xi_p) / np.cosh(eta_p))
    phi = chi + (np.array(_DELTA)[:, None] * np.sin(2 * _J * chi)).sum(0)
    lon = central_meridian(zone_number).reshape(-1) + np.degrees(
        np.arctan2(np.sinh(eta_p), np.cos(xi_p)))
    return np.degrees(phi).reshape(shape), lon.reshape(shape)


_ZONE_RE = re.compile(r"^\s*0*([1-9]|[1-5][0-9]|60)\s*([C-HJ-NP-Xc-hj-np-x])\s*$")


def parse_zone(text: str) -> tuple[int, str] | None:
    """'17T' (or '17 T', '17t') -> (17, 'T'); None when text is no UTM zone (number 1-60, band letter C-X)."""
    m = _ZONE_RE.match(text or "")
    return (int(m.group(1)), m.group(2).upper()) if m else None


def check_zone(text: str | None) -> tuple[int, str] | None:
    """The --utm_zone value parsed, None when not given; UserError when it is no UTM zone."""
    if text is None:
        return None
    zone = parse_zone(text)
    if zone is None:
        raise UserError(f"--utm_zone {text!r} is no UTM zone; give a zone number 1-60 and a latitude band letter "
                        f"C-X (not I, O), e.g. --utm_zone 17T")
    return zone


@dataclass
class Positions:
    """Geo-tags of N images: UTM (N×2 easting, northing), zone ('17T', '' if unknown), lat/lon (N×2, NaN if
    unknown) and where the lat/lon came from ('name', 'utm' = converted, '' = unknown)."""
    utm: np.ndarray
    zone: list[str]
    latlon: np.ndarray
    latlon_source: list[str]

    def subset(self, rows: np.ndarray) -> "Positions":
        """The positions of the given rows."""
        return Positions(self.utm[rows], [self.zone[i] for i in rows], self.latlon[rows],
                         [self.latlon_source[i] for i in rows])


def _name_geo(path: Path) -> tuple[tuple[int, str] | None, tuple[float, float] | None]:
    """(zone, (lat, lon)) from fields 3-6 of a datasets_vg name; lat/lon only when fields 3-4 are a zone."""
    fields = Path(path).name.split("@")
    zone = parse_zone(fields[3] + fields[4]) if len(fields) > 4 else None
    if zone is None or len(fields) <= 6:
        return zone, None
    try:
        lat, lon = float(fields[5]), float(fields[6])
    except ValueError:
        return zone, None
    return zone, ((lat, lon) if abs(lat) <= 90 and abs(lon) <= 180 else None)


def positions_of(paths: Sequence[Path], default_zone: tuple[int, str] | None = None) -> Positions:
    """Positions from datasets_vg file names (UserError counting the names without UTM).

    Lat/lon: fields 5-6 of the name where present (after a zone in fields 3-4), otherwise converted from UTM
    with the zone of fields 3-4, or default_zone (--utm_zone) when the name carries none; else unknown (NaN).
    """
    utm = utms_of(list(paths))  # N×2
    parsed = [_name_geo(p) for p in paths]
    zones = [z or default_zone for z, _ in parsed]
    latlon = np.full((len(paths), 2), np.nan)
    named = np.array([ll is not None for _, ll in parsed], dtype=bool)
    if named.any():
        latlon[named] = [ll for _, ll in parsed if ll is not None]
    convert = np.array([z is not None for z in zones], dtype=bool) & ~named
    if convert.any():
        number = np.array([zones[i][0] for i in np.flatnonzero(convert)])
        northern = np.array([zones[i][1] >= "N" for i in np.flatnonzero(convert)])
        latlon[convert] = np.stack(utm_to_latlon(utm[convert, 0], utm[convert, 1], number, northern), axis=1)
    source = ["name" if n else "utm" if c else "" for n, c in zip(named, convert)]
    return Positions(utm, [f"{z[0]}{z[1]}" if z else "" for z in zones], latlon, source)
