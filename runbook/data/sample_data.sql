-- Sample data of the example application, RAG Memory, valid at revision 0001 (initial_schema).
-- Loaded once into a fresh database: 6 collections (two with a NULL description, one empty, one
-- blank, so that 0002 require_collection_description has work to do), 20 documents, 60 chunks
-- with 8-dimensional embeddings. Deterministic: no random(), so runs are comparable.

INSERT INTO collections (name, description) VALUES
    ('product-docs', 'Public product documentation, one document per page'),
    ('engineering-rfcs', 'Design documents and RFCs from the engineering wiki'),
    ('support-tickets', NULL),
    ('onboarding', NULL),
    ('meeting-notes', ''),
    ('legal-contracts', '   ');

INSERT INTO documents (collection_id, title, content, metadata)
SELECT c.id, d.title, d.content, d.metadata::jsonb
FROM (VALUES
    ('product-docs', 'Getting started',
     'Install the client, create a collection and ingest your first documents in five minutes.',
     '{"source": "docs.example.com/start", "lang": "en", "version": "2.3"}'),
    ('product-docs', 'Search API reference',
     'POST /search takes a query, a collection and top_k; results are ranked by cosine similarity.',
     '{"source": "docs.example.com/api/search", "lang": "en", "version": "2.3"}'),
    ('product-docs', 'Chunking strategies',
     'Documents are split into overlapping windows of about 512 tokens before embedding.',
     '{"source": "docs.example.com/guides/chunking", "lang": "en", "tags": ["ingest"]}'),
    ('product-docs', 'Rate limits',
     'Each API key may send 600 requests per minute; bursts above that receive HTTP 429.',
     '{"source": "docs.example.com/limits", "lang": "en"}'),
    ('product-docs', 'Guide de démarrage',
     'Installez le client, créez une collection et importez vos premiers documents.',
     '{"source": "docs.example.com/fr/start", "lang": "fr", "version": "2.3"}'),
    ('engineering-rfcs', 'RFC-012: hybrid retrieval',
     'Combine BM25 scores with vector similarity using reciprocal rank fusion.',
     '{"author": "a.chen", "status": "accepted", "tags": ["retrieval", "ranking"]}'),
    ('engineering-rfcs', 'RFC-017: embedding model upgrade',
     'Move from 384 to 768 dimensions; re-embed lazily on first read of each chunk.',
     '{"author": "m.okafor", "status": "draft", "tags": ["embeddings"]}'),
    ('engineering-rfcs', 'RFC-021: tenant isolation',
     'One database per tenant, migrated by the same runbook in a rolling window.',
     '{"author": "j.silva", "status": "accepted", "tags": ["multi-tenant", "ops"]}'),
    ('engineering-rfcs', 'RFC-023: retention policy',
     'Chunks of deleted documents are removed by ON DELETE CASCADE, never by a batch job.',
     '{"author": "a.chen", "status": "review"}'),
    ('support-tickets', 'Ticket 4411: empty search results',
     'Customer reports no results for queries with accents; the tokenizer stripped diacritics.',
     '{"ticket": 4411, "priority": "high", "customer": "acme"}'),
    ('support-tickets', 'Ticket 4420: slow ingestion',
     'Bulk upload of 20k PDFs took six hours; the embedding queue was capped at two workers.',
     '{"ticket": 4420, "priority": "normal", "customer": "globex"}'),
    ('support-tickets', 'Ticket 4435: duplicate chunks',
     'Re-ingesting a document created duplicate chunks until the unique index was added.',
     '{"ticket": 4435, "priority": "low", "customer": "initech", "resolved": true}'),
    ('support-tickets', 'Ticket 4502: 429 during backfill',
     'A nightly backfill exceeded the rate limit; advised exponential backoff with jitter.',
     '{"ticket": 4502, "priority": "normal", "customer": "acme", "resolved": true}'),
    ('onboarding', 'Your first week',
     'Laptop setup, access requests, and the on-call shadowing schedule.',
     '{"audience": "engineering", "owner": "people-ops"}'),
    ('onboarding', 'Production access',
     'Production database access goes through the runbook tool and its audited run log.',
     '{"audience": "sre", "owner": "platform"}'),
    ('meeting-notes', 'Weekly sync 2024-03-04',
     'Agreed to require a description for every collection before the 2.4 release.',
     '{"date": "2024-03-04", "attendees": ["a.chen", "j.silva", "m.okafor"]}'),
    ('meeting-notes', 'Incident review 2024-03-11',
     'A migration waited on an idle-in-transaction session for 14 minutes; add lock_timeout.',
     '{"date": "2024-03-11", "incident": "INC-231", "attendees": ["j.silva"]}'),
    ('meeting-notes', 'Planning 2024-Q2',
     'Priorities: hybrid retrieval, tenant isolation, cheaper re-embedding.',
     '{"date": "2024-04-01", "quarter": "2024-Q2"}'),
    ('legal-contracts', 'Data processing agreement',
     'The processor stores customer documents in the EU region and deletes them within 30 days.',
     '{"counterparty": "acme", "signed": "2023-11-02", "confidential": true}'),
    ('legal-contracts', 'Master services agreement',
     'Service levels: 99.9% monthly availability, support response within one business day.',
     '{"counterparty": "globex", "signed": "2024-01-15", "confidential": true}')
) AS d (collection, title, content, metadata)
JOIN collections c ON c.name = d.collection;

-- Three chunks per document, each with a small deterministic embedding.
INSERT INTO chunks (document_id, chunk_index, content, embedding)
SELECT
    d.id,
    i,
    format('%s [part %s of 3] %s', d.title, i + 1, d.content),
    ARRAY(SELECT round(sin(d.id * 7 + i * 3 + k)::numeric, 4)::real
          FROM generate_series(1, 8) AS k ORDER BY k)
FROM documents d
CROSS JOIN generate_series(0, 2) AS i;
