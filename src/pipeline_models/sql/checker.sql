-- The checker's own reads. It reads tables directly and never trusts the pipeline's log.


-- name: snapshot_documents
SELECT * FROM documents;


-- name: snapshot_jobs
SELECT * FROM upload_jobs;


-- name: snapshot_chunk_buffer
SELECT * FROM document_chunk_buffer ORDER BY document_id, chunk_ord;


-- name: snapshot_vector_buffer
SELECT * FROM document_vector_buffer ORDER BY document_id, chunk_id;


-- name: snapshot_final_chunks
SELECT * FROM document_chunks ORDER BY document_id, chunk_ord;
