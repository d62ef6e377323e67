"""Outbound notices: e-mail (SMTP) and iCalendar; plain values in, no database."""
