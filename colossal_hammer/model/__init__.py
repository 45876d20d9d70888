"""Model building, embedding initialisation, export."""
